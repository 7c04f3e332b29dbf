// A WebSocket that speaks Livefolio's protocol: snapshot first, then deltas with `seq`.
// Reconnects with exponential backoff and full jitter; a gap in `seq` asks for a fresh snapshot.
// Messages are applied once per animation frame, conflated to the latest value per stream, so
// a burst of updates (or a hidden tab) costs one redraw, not one per message.
//
// Liveness: an open socket can go silent (a frozen server, a dead proxy) without closing. The
// page pings after a heartbeat interval without frames (the server answers `pong`); after two
// intervals without any frame it says "Stalled", dims the numbers and reconnects. It says
// "Live" again only when a fresh snapshot arrives.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 30000;

export class LiveConnection {
  constructor({ path, onMessage, onStatus, heartbeatSeconds = 10 }) {
    this.url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.heartbeatMs = heartbeatSeconds * 1000;
    this.lastFrameAt = 0; // when the current socket last received a frame (or opened)
    this.dataAt = 0; // when the page last received data (a snapshot or a delta): "updated N s ago"
    this.state = null;
    this.retryAt = null;
    this.watchdog = null;
    this.attempt = 0;
    this.lastSeq = 0;
    this.synced = false;
    this.socket = null;
    this.retryTimer = null;
    this.pending = new Map();
    this.frame = null;
  }

  // Deltas of one stream replace each other; everything else is kept in order.
  static streamKey(message) {
    if (message.type === "valuation") return `valuation:${message.portfolio.id}`;
    if (message.type === "quote") return `quote:${message.instrument}`;
    if (message.type === "book") return "book";
    return `seq:${message.seq}`;
  }

  enqueue(message) {
    if (message.type === "snapshot") this.pending.clear(); // older deltas are inside the snapshot
    const key = LiveConnection.streamKey(message);
    this.pending.delete(key); // re-insert so the newest value keeps its place in time order
    this.pending.set(key, message);
    if (this.frame === null) {
      this.frame = requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.frame = null;
    const batch = [...this.pending.values()];
    this.pending.clear();
    for (const message of batch) this.onMessage(message);
  }

  connect() {
    clearTimeout(this.retryTimer);
    if (!this.watching) {
      this.watching = true;
      this.watchNetwork();
    }
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    this.lastSeq = 0;
    this.synced = false;
    this.resyncAsked = false;
    this.lastFrameAt = Date.now();
    this.pinged = false;
    socket.addEventListener("message", (event) => {
      if (this.socket === socket) this.receive(event);
    });
    socket.addEventListener("close", () => {
      if (this.socket === socket) this.scheduleReconnect();
    });
    if (this.watchdog === null) this.watchdog = setInterval(() => this.tick(), 1000);
  }

  setState(state, retryAt = null) {
    this.state = state;
    this.retryAt = retryAt;
    this.report();
  }

  // The status with its clocks: seconds until the next attempt, seconds since the last data.
  report() {
    this.onStatus({
      state: this.state,
      retryAt: this.retryAt,
      retryIn: this.retryAt === null ? null : Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000)),
      updatedAgo: this.dataAt ? Math.floor((Date.now() - this.dataAt) / 1000) : null,
    });
  }

  // Once a second: ping a quiet socket, give up on a silent one, and keep the clocks counting.
  tick() {
    const socket = this.socket;
    const quiet = Date.now() - this.lastFrameAt;
    const opening = socket && socket.readyState <= WebSocket.OPEN; // connecting or open
    if (opening && quiet >= 2 * this.heartbeatMs) {
      // Silent for two heartbeat intervals (open or still opening): stalled. Drop this socket
      // without waiting for its closing handshake, which a frozen server never answers.
      this.socket = null;
      socket.close();
      this.scheduleReconnect("stalled");
      return;
    }
    if (opening && socket.readyState === WebSocket.OPEN && quiet >= this.heartbeatMs && !this.pinged) {
      this.pinged = true;
      this.send({ type: "ping" });
    }
    if (this.state !== "live" && this.state !== "connecting") this.report();
  }

  receive(event) {
    this.lastFrameAt = Date.now();
    this.pinged = false;
    const message = JSON.parse(event.data);
    const gap = message.seq !== this.lastSeq + 1;
    this.lastSeq = message.seq;
    if (message.type === "snapshot") {
      this.synced = true;
      this.resyncAsked = false;
      this.attempt = 0;
      this.dataAt = Date.now();
      this.setState("live");
    } else if (gap || !this.synced) {
      // A missing frame means our picture may be stale: drop deltas until a fresh snapshot.
      this.synced = false;
      this.pending.clear();
      if (!this.resyncAsked) {
        this.resyncAsked = true;
        this.send({ type: "resync" });
      }
      return;
    }
    if (message.type !== "pong" && message.type !== "error") this.dataAt = Date.now();
    this.enqueue(message);
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  // The browser knows when the network is gone: say so, and retry at once when it is back.
  watchNetwork() {
    window.addEventListener("offline", () => this.setState("offline"));
    window.addEventListener("online", () => {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) {
        // The socket survived: a fresh snapshot covers whatever was missed meanwhile.
        this.synced = false;
        this.resyncAsked = true;
        this.send({ type: "resync" });
      } else {
        this.connect();
      }
    });
  }

  scheduleReconnect(state = "reconnecting") {
    if (!navigator.onLine) {
      this.setState("offline");
      return; // the "online" event reconnects
    }
    clearTimeout(this.retryTimer);
    this.attempt += 1;
    const cap = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** (this.attempt - 1));
    // Full jitter over [MIN/2, cap]. Clamping random() * cap to a floor instead would put half
    // of all clients on exactly the floor: a small thundering herd after every restart.
    const floor = MIN_DELAY_MS / 2;
    const delay = floor + Math.random() * (cap - floor);
    this.setState(state, Date.now() + delay);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}

// The connection's state as the status pill shows it: "Live" only while fresh data flows.
export function showStatus(el, { state, retryIn, updatedAgo }) {
  el.className = `status status-${state}`;
  el.dataset.state = state;
  document.body.classList.toggle("is-stalled", state !== "live" && state !== "connecting");
  const ago = updatedAgo === null ? "" : ` · updated ${agoText(updatedAgo)}`;
  if (state === "live") el.textContent = "Live";
  else if (state === "offline") el.textContent = "Offline";
  else if (state === "connecting") el.textContent = "Connecting…";
  else {
    const label = state === "stalled" ? "Stalled, reconnecting" : "Reconnecting";
    const when = retryIn !== null && retryIn > 0 ? ` in ${retryIn} s` : "";
    el.textContent = `${label}${when}…${ago}`;
  }
}

function agoText(seconds) {
  if (seconds < 60) return `${seconds} s ago`;
  return `${Math.floor(seconds / 60)} min ago`;
}
