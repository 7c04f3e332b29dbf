// A WebSocket that speaks Livefolio's protocol: snapshot first, then deltas with `seq`.
// Reconnects with exponential backoff and full jitter; a gap in `seq` asks for a fresh snapshot.
// Messages are applied once per animation frame, conflated to the latest value per stream, so
// a burst of updates (or a hidden tab) costs one redraw, not one per message.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 30000;

export class LiveConnection {
  constructor({ path, onMessage, onStatus }) {
    this.url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
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
    this.onStatus({ state: this.attempt === 0 ? "connecting" : "reconnecting" });
    const socket = new WebSocket(this.url);
    this.socket = socket;
    this.lastSeq = 0;
    this.synced = false;
    this.resyncAsked = false;
    socket.addEventListener("message", (event) => this.receive(event));
    socket.addEventListener("close", () => {
      if (this.socket === socket) this.scheduleReconnect();
    });
  }

  receive(event) {
    const message = JSON.parse(event.data);
    const gap = message.seq !== this.lastSeq + 1;
    this.lastSeq = message.seq;
    if (message.type === "snapshot") {
      this.synced = true;
      this.resyncAsked = false;
      this.attempt = 0;
      this.onStatus({ state: "live" });
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
    this.enqueue(message);
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  // The browser knows when the network is gone: say so, and retry at once when it is back.
  watchNetwork() {
    window.addEventListener("offline", () => this.onStatus({ state: "offline" }));
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

  scheduleReconnect() {
    if (!navigator.onLine) {
      this.onStatus({ state: "offline" });
      return; // the "online" event reconnects
    }
    this.attempt += 1;
    const cap = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** (this.attempt - 1));
    // Full jitter over [MIN/2, cap]. Clamping random() * cap to a floor instead would put half
    // of all clients on exactly the floor: a small thundering herd after every restart.
    const floor = MIN_DELAY_MS / 2;
    const delay = floor + Math.random() * (cap - floor);
    this.onStatus({ state: "reconnecting", retryAt: Date.now() + delay });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}
