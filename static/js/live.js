// Live runs: an output pane scrolled to its end follows what the run prints; one scrolled up stays put.
document.addEventListener("htmx:oobBeforeSwap", (event) => {
  const target = event.detail.target;
  if (!target || !target.classList || !target.classList.contains("live-stream")) return;
  const following = target.scrollHeight - target.scrollTop - target.clientHeight < 24;
  if (following) {
    requestAnimationFrame(() => {
      target.scrollTop = target.scrollHeight;
    });
  }
});
