// hearth's terminal page: xterm.js attached to a VM's serial console over a WebSocket.
// Binary messages are what the guest wrote; text messages are JSON: who holds the keyboard
// ({"writer": NAME|null, "you": BOOL}) and why the console closed ({"closed": WHY}).
// Everything typed is sent as bytes; the host drops it unless this page holds the keyboard.
(function () {
  "use strict";
  var box = document.getElementById("terminal");
  var status = document.getElementById("terminal-status");
  var say = function (text, state) {
    status.textContent = text;
    status.setAttribute("data-state", state);
  };
  var term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
  term.open(box);
  var url = new URL(box.getAttribute("data-socket"), window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  var socket = new WebSocket(url.toString());
  socket.binaryType = "arraybuffer";
  var closed = false;
  socket.onopen = function () {
    say("Attached. Type to take the keyboard.", "open");
    term.focus();
  };
  socket.onmessage = function (message) {
    if (typeof message.data !== "string") {
      term.write(new Uint8Array(message.data));
      return;
    }
    var control = JSON.parse(message.data);
    if ("closed" in control) {
      closed = true;
      say("Closed: " + control.closed + ". Reload the page to attach again.", "closed");
    } else if (control.you) {
      say("You hold the keyboard.", "writer");
    } else if (control.writer) {
      say(control.writer + " is typing; you are watching.", "watcher");
    } else {
      say("Nobody is typing: type to take the keyboard.", "free");
    }
  };
  socket.onclose = function () {
    if (!closed) {
      say("Disconnected. Reload the page to attach again.", "closed");
    }
  };
  var encoder = new TextEncoder();
  term.onData(function (data) {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(encoder.encode(data));
    }
  });
})();
