// RDP in the browser: Devolutions' IronRDP (WebAssembly, from @devolutions/iron-remote-desktop-rdp,
// served by the gateway under /vendor/ironrdp/) over the gateway's RDCleanPath entrance
// (wss://<gateway>/rdcleanpath/<vm>, README "RDP in the browser"). The gateway reaches the VM's
// RDP console and does X.224 and TLS with it; IronRDP does the rest of RDP in here and draws on
// our canvas. Keyboard (by physical key: KeyboardEvent.code to PS/2 set 1 scancodes), mouse and
// wheel go to the desktop while the canvas has focus.
//
// Not the package's <iron-remote-desktop> web component: it sizes itself with inline style
// attributes, which the portal's Content-Security-Policy does not allow.

let backend;

/** The IronRDP module, loaded and its WebAssembly compiled once per page. */
async function ironrdp() {
  backend ??= (async () => {
    const mod = await import('/vendor/ironrdp/iron-remote-desktop-rdp.js');
    await mod.init('WARN');
    return mod;
  })();
  try {
    return await backend;
  } catch (e) {
    backend = undefined;
    throw e;
  }
}

// The WebSocket IronRDP opens is its own; to read the gateway's close code (4401 resume refused,
// 4001 reroute, 4502...), as the other viewers do, the page's WebSocket records the RDCleanPath
// sockets it makes. Nothing else about WebSocket changes.
const NativeWebSocket = globalThis.WebSocket;
let lastSocket;
class ObservedWebSocket extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    if (new URL(String(url), location.href).pathname.startsWith('/rdcleanpath/')) lastSocket = this;
  }
}
globalThis.WebSocket = ObservedWebSocket;

/** The close event of `ws`, or undefined if it has not closed within `ms`. */
function closeOf(ws, ms) {
  if (!ws) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    ws.addEventListener('close', (e) => {
      clearTimeout(timer);
      resolve(e);
    }, { once: true });
  });
}

// KeyboardEvent.code -> scancode (PS/2 set 1; 0xE0xx for the extended keys).
const SCANCODES = new Map();
const row = (first, codes) => codes.split(' ').forEach((c, i) => SCANCODES.set(c, first + i));
row(0x01, 'Escape Digit1 Digit2 Digit3 Digit4 Digit5 Digit6 Digit7 Digit8 Digit9 Digit0 Minus Equal Backspace Tab');
row(0x10, 'KeyQ KeyW KeyE KeyR KeyT KeyY KeyU KeyI KeyO KeyP BracketLeft BracketRight Enter ControlLeft');
row(0x1e, 'KeyA KeyS KeyD KeyF KeyG KeyH KeyJ KeyK KeyL Semicolon Quote Backquote ShiftLeft Backslash');
row(0x2c, 'KeyZ KeyX KeyC KeyV KeyB KeyN KeyM Comma Period Slash ShiftRight NumpadMultiply AltLeft Space CapsLock');
row(0x3b, 'F1 F2 F3 F4 F5 F6 F7 F8 F9 F10 NumLock ScrollLock Numpad7 Numpad8 Numpad9 NumpadSubtract');
row(0x4b, 'Numpad4 Numpad5 Numpad6 NumpadAdd Numpad1 Numpad2 Numpad3 Numpad0 NumpadDecimal');
row(0x56, 'IntlBackslash F11 F12');
row(0xe01c, 'NumpadEnter ControlRight');
row(0xe047, 'Home ArrowUp PageUp');
row(0xe04f, 'End ArrowDown PageDown Insert Delete');
row(0xe05b, 'MetaLeft MetaRight ContextMenu');
SCANCODES.set('NumpadDivide', 0xe035).set('PrintScreen', 0xe037).set('AltRight', 0xe038);
SCANCODES.set('ArrowLeft', 0xe04b).set('ArrowRight', 0xe04d).set('IntlRo', 0x73).set('IntlYen', 0x7d);

/** Why IronRDP gave up, in words, and whether trying again can help. */
function describe(e) {
  const kind = typeof e?.kind === 'function' ? e.kind() : undefined;
  const text = typeof e?.backtrace === 'function' ? e.backtrace() : String(e?.message ?? e);
  // IronErrorKind: 1 WrongPassword, 2 LogonFailure, 3 AccessDenied, 4 RDCleanPath, 5 ProxyConnect, 6 NegotiationFailure.
  switch (kind) {
    case 1:
    case 2:
      return { credentials: true, reason: 'the desktop refused the user name or password' };
    case 3:
      return { credentials: true, reason: 'the desktop denied access to this user' };
    case 6:
      return { fatal: true, reason: `the desktop refused the security protocols offered (${text.split('\n')[0]})` };
    case 4: {
      const status = e.rdcleanpathDetails?.()?.httpStatusCode;
      return { reason: status ? `the gateway refused (HTTP ${status})` : 'the gateway refused' };
    }
    default:
      return { reason: text.split('\n')[0] || 'connection failed' };
  }
}

/**
 * Connect to `url` (the RDCleanPath WebSocket) with `token` (a console ticket or its resume token)
 * and the Windows credentials, drawing into `screen`. Calls `onConnected()` once the desktop is up
 * and `onEnd({close, error})` once when the connection ends or could not be made: `close` is the
 * WebSocket's close event (with the gateway's code) when known, `error` what IronRDP said.
 */
export async function openRdp(screen, { url, token, vm, user, password, domain, onConnected, onEnd }) {
  const mod = await ironrdp();
  const canvas = document.createElement('canvas');
  canvas.tabIndex = 0;
  canvas.className = 'rdp';
  screen.replaceChildren(canvas);
  const width = Math.max(640, Math.min(4096, Math.floor(screen.clientWidth / 2) * 2 || 1024));
  const height = Math.max(480, Math.min(2160, Math.floor(screen.clientHeight / 2) * 2 || 768));
  canvas.width = width;
  canvas.height = height;
  let session;
  let over = false;
  const off = [];
  const finish = async (error) => {
    if (over) return;
    over = true;
    for (const f of off) f();
    const close = await closeOf(socket, 2000);
    onEnd({ close, error: error === undefined ? undefined : describe(error) });
  };
  const conn = {
    end() {
      over = true;
      for (const f of off) f();
      try {
        session?.shutdown();
      } catch {
        /* already down */
      }
      screen.replaceChildren();
    },
    ctrlAltDel() {
      press([0x1d, 0x38, 0xe053], true);
      press([0xe053, 0x38, 0x1d], false);
    },
  };
  const apply = (events) => {
    if (!session || over) return;
    const tx = new mod.Backend.InputTransaction();
    for (const ev of events) tx.addEvent(ev);
    session.applyInputs(tx);
  };
  const press = (codes, down) => apply(codes.map((c) => (down ? mod.Backend.DeviceEvent.keyPressed(c) : mod.Backend.DeviceEvent.keyReleased(c))));

  let builder = new mod.Backend.SessionBuilder()
    .username(user)
    .password(password)
    .destination(vm)
    .proxyAddress(url)
    .authToken(token)
    .desktopSize(new mod.Backend.DesktopSize(width, height))
    .renderCanvas(canvas)
    .setCursorStyleCallbackContext(canvas)
    .setCursorStyleCallback((kind, data, x, y) => {
      canvas.style.cursor = kind === 'none' ? 'none' : kind === 'url' && data ? `url(${data}) ${x ?? 0} ${y ?? 0}, default` : 'default';
    })
    // TLS security: the desktop shows its own logon (xrdp has no NLA). A desktop that insists on
    // NLA answers with a negotiation failure, which the viewer shows.
    .extension(mod.enableCredssp(false));
  if (domain) builder = builder.serverDomain(domain);
  const socketBefore = lastSocket;
  let socket;
  try {
    const connecting = builder.connect();
    socket = lastSocket !== socketBefore ? lastSocket : undefined;
    session = await connecting;
  } catch (e) {
    socket ??= lastSocket !== socketBefore ? lastSocket : undefined;
    void finish(e);
    return conn;
  }
  socket ??= lastSocket !== socketBefore ? lastSocket : undefined;
  if (over) {
    session.shutdown();
    return conn;
  }
  onConnected();

  const listen = (target, type, fn, opts) => {
    target.addEventListener(type, fn, opts);
    off.push(() => target.removeEventListener(type, fn, opts));
  };
  const position = (e) => {
    const r = canvas.getBoundingClientRect();
    const x = Math.round(((e.clientX - r.left) * canvas.width) / Math.max(1, r.width));
    const y = Math.round(((e.clientY - r.top) * canvas.height) / Math.max(1, r.height));
    return mod.Backend.DeviceEvent.mouseMove(Math.max(0, Math.min(canvas.width - 1, x)), Math.max(0, Math.min(canvas.height - 1, y)));
  };
  listen(canvas, 'mousemove', (e) => apply([position(e)]));
  listen(canvas, 'mousedown', (e) => {
    e.preventDefault();
    canvas.focus();
    apply([position(e), mod.Backend.DeviceEvent.mouseButtonPressed(e.button)]);
  });
  listen(canvas, 'mouseup', (e) => {
    e.preventDefault();
    apply([position(e), mod.Backend.DeviceEvent.mouseButtonReleased(e.button)]);
  });
  listen(canvas, 'contextmenu', (e) => e.preventDefault());
  listen(canvas, 'wheel', (e) => {
    e.preventDefault();
    const vertical = e.deltaY !== 0;
    apply([mod.Backend.DeviceEvent.wheelRotations(vertical, -(vertical ? e.deltaY : e.deltaX), e.deltaMode)]);
  }, { passive: false });
  const key = (e) => {
    const code = SCANCODES.get(e.code);
    if (code === undefined) return;
    e.preventDefault();
    press([code], e.type === 'keydown');
  };
  listen(canvas, 'keydown', key);
  listen(canvas, 'keyup', key);
  listen(canvas, 'blur', () => session && !over && session.releaseAllInputs());
  canvas.focus();

  session.run().then(
    () => finish(undefined),
    (e) => finish(e),
  );
  return conn;
}
