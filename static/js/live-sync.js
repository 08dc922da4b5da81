// A run that waits for its answer ("Run now"): while the browser waits for the page with the result, show
// what the run prints. The form sends an id for the run (live_id) and this page polls that run's live
// output (views.live) into #sync-live, as a job's page does. Without scripts the form works as before.
(function () {
  var form = document.getElementById("run-form");
  var panel = document.getElementById("sync-live");
  if (!form || !panel) return;

  function uuid4() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) { return (b + 0x100).toString(16).slice(1); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" + hex.slice(20);
  }

  form.addEventListener("submit", function () {
    var sync = form.querySelector('input[name="execution"][value="sync"]');
    // htmx is loaded with defer: asked for at submit time, not when this script runs.
    if (!sync || !sync.checked || !window.htmx) return;
    var id = uuid4();
    var input = form.querySelector('input[name="live_id"]');
    if (!input) {
      input = document.createElement("input");
      input.type = "hidden";
      input.name = "live_id";
      form.appendChild(input);
    }
    input.value = id;
    panel.hidden = false;
    var old = document.getElementById("live-poll");
    if (old) old.remove();
    var poll = document.createElement("div");
    poll.id = "live-poll";
    poll.hidden = true;
    poll.setAttribute("hx-get", panel.getAttribute("data-live-url").replace("00000000-0000-0000-0000-000000000000", id) + "?after=0&attempt=0&seen=");
    poll.setAttribute("hx-trigger", "every 1s");
    poll.setAttribute("hx-swap", "outerHTML");
    panel.appendChild(poll);
    window.htmx.process(poll);
    panel.scrollIntoView({ block: "nearest" });
  });
})();
