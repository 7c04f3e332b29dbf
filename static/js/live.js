// A WebSocket that speaks Livefolio's protocol: snapshot first, then deltas with `seq`.
// Reconnects with exponential backoff and full jitter; a gap in `seq` asks for a fresh snapshot.

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
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.onStatus({ state: this.attempt === 0 ? "connecting" : "reconnecting" });
    const socket = new WebSocket(this.url);
    this.socket = socket;
    this.lastSeq = 0;
    this.synced = false;
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
      this.attempt = 0;
      this.onStatus({ state: "live" });
    } else if (gap || !this.synced) {
      // A missing frame means our picture may be stale: drop deltas until a fresh snapshot.
      this.synced = false;
      this.send({ type: "resync" });
      return;
    }
    this.onMessage(message);
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  scheduleReconnect() {
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
