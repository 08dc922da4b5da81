// Turns <textarea data-editor="python"> into a CodeMirror editor (the textarea still works without JS),
// and <pre data-viewer="python"> into a read-only one. A source error's line is marked in the editor.
(function () {
  "use strict";

  function nextFocusable(element) {
    var focusables = Array.prototype.slice.call(
      document.querySelectorAll("a[href], button, input, select, textarea, [tabindex]:not([tabindex='-1'])")
    ).filter(function (el) { return !el.disabled && el.offsetParent !== null; });
    var index = focusables.indexOf(element);
    return index >= 0 ? focusables[index + 1] : null;
  }

  function editor(textarea) {
    var cm = CodeMirror.fromTextArea(textarea, {
      mode: "python",
      lineNumbers: true,
      indentUnit: 4,
      tabSize: 4,
      indentWithTabs: false,
      matchBrackets: true,
      autoCloseBrackets: true,
      styleActiveLine: true,
      viewportMargin: Infinity,
      screenReaderLabel: "Source code",
      extraKeys: {
        // Spaces, never tab characters: Python mixes them badly.
        Tab: function (cm) {
          if (cm.somethingSelected()) { cm.indentSelection("add"); }
          else { cm.replaceSelection(Array(cm.getOption("indentUnit") + 1).join(" "), "end", "+input"); }
        },
        "Shift-Tab": function (cm) { cm.indentSelection("subtract"); },
        // Keyboard users need a way out of an editor that takes Tab.
        Esc: function (cm) {
          var next = nextFocusable(cm.getWrapperElement().querySelector("textarea"));
          if (next) { next.focus(); }
        }
      }
    });
    var box = textarea.closest("[data-error-line]");
    var line = box ? parseInt(box.getAttribute("data-error-line"), 10) : NaN;
    if (!isNaN(line) && line > 0) {
      var handle = cm.addLineClass(line - 1, "background", "cm-error-line");
      cm.setCursor({ line: line - 1, ch: 0 });
      cm.scrollIntoView({ line: line - 1, ch: 0 }, 80);
      cm.on("change", function () { cm.removeLineClass(handle, "background", "cm-error-line"); });
    }
    cm.getInputField().setAttribute("aria-describedby", "source-help" + (document.getElementById("source-error") ? " source-error" : ""));
    textarea.form && textarea.form.addEventListener("submit", function () { cm.save(); });
    window.omlwebEditor = cm;
  }

  function viewer(pre) {
    var host = document.createElement("div");
    host.className = "code-viewer";
    pre.parentNode.insertBefore(host, pre);
    CodeMirror(host, {
      value: pre.textContent,
      mode: "python",
      lineNumbers: true,
      readOnly: true,
      viewportMargin: Infinity,
      screenReaderLabel: pre.getAttribute("aria-label") || "Source code"
    });
    pre.hidden = true;
  }

  if (typeof CodeMirror === "undefined") { return; }
  document.querySelectorAll("textarea[data-editor='python']").forEach(editor);
  document.querySelectorAll("pre[data-viewer='python']").forEach(viewer);
})();
