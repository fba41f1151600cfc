// Refreshes the page's content in place every few seconds (no full reload, no framework):
// fetch the same URL, swap the parts of <main> that changed. What the reader is doing survives
// it: while text is selected in the content (or a pointer button is held) the refresh waits;
// keyboard focus, sideways and vertical scroll of scrolled frames and opened <details> are
// carried over to the new content. Signed out meanwhile: load the page, which shows sign-in.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh-seconds")) || 0;
  var stamp = document.getElementById("refreshed");
  if (!seconds) { return; }
  var pressed = false;
  var paused = false;
  function show(text) { if (stamp) { stamp.textContent = text; } }
  function now() { return new Date().toISOString().slice(11, 19) + " UTC"; }
  function updated() { show("updated " + now() + " · every " + seconds + " s"); }
  updated();

  function content() { return document.getElementById("content"); }

  // Text selected inside the content: the reader may be copying an id.
  function selecting(root) {
    var selection = window.getSelection();
    if (!selection || selection.isCollapsed || !selection.rangeCount) { return false; }
    return root.contains(selection.getRangeAt(0).commonAncestorContainer);
  }

  // Where an element sits: the id of its nearest ancestor (or itself) that has one, then the
  // child indexes down from there. Good for the page's fixed structure (frames, details).
  function pathOf(el, root) {
    var steps = [];
    while (el && el !== root && !el.id) {
      steps.unshift(Array.prototype.indexOf.call(el.parentNode.children, el));
      el = el.parentNode;
    }
    return { id: el && el !== root ? el.id : null, steps: steps };
  }
  function byPath(path, root) {
    var el = path.id ? root.querySelector("#" + CSS.escape(path.id)) : root;
    for (var i = 0; el && i < path.steps.length; i++) { el = el.children[path.steps[i]]; }
    return el || null;
  }

  // Focus is found again by a key that moves with its row: the id, else a link's address
  // within its section, else its place.
  function focusKey(el, root) {
    if (!el || el === root || !root.contains(el)) { return null; }
    if (el.id) { return { id: el.id }; }
    var href = el.getAttribute("href");
    if (href !== null) {
      var section = el.closest("[id]");
      return { section: section && root.contains(section) ? section.id : null, href: href };
    }
    return { path: pathOf(el, root) };
  }
  function byFocusKey(key, root) {
    if (key.id) { return root.querySelector("#" + CSS.escape(key.id)); }
    if (key.path) { return byPath(key.path, root); }
    var within = key.section ? root.querySelector("#" + CSS.escape(key.section)) : root;
    return within && within.querySelector('[href="' + CSS.escape(key.href) + '"]');
  }

  function remember(root) {
    var scrolled = [];
    var opened = [];
    Array.prototype.forEach.call(root.querySelectorAll("*"), function (el) {
      if (el.scrollLeft || el.scrollTop) {
        scrolled.push({ path: pathOf(el, root), left: el.scrollLeft, top: el.scrollTop });
      }
    });
    Array.prototype.forEach.call(root.querySelectorAll("details[open]"), function (el) {
      opened.push(pathOf(el, root));
    });
    return { focus: focusKey(document.activeElement, root), scrolled: scrolled, opened: opened };
  }

  function restore(state, root) {
    state.opened.forEach(function (path) {
      var el = byPath(path, root);
      if (el && el.tagName === "DETAILS") { el.open = true; }
    });
    state.scrolled.forEach(function (s) {
      var el = byPath(s.path, root);
      if (el) { el.scrollLeft = s.left; el.scrollTop = s.top; }
    });
    if (state.focus && !root.contains(document.activeElement)) {
      var el = byFocusKey(state.focus, root);
      if (el) { el.focus({ preventScroll: true }); }
    }
  }

  // Swaps only the top-level parts that changed, so that a part that did not keeps its nodes
  // (and the pointer's row); a page of another shape is swapped whole.
  function swap(current, fresh) {
    var olds = current.children;
    var news = fresh.children;
    var same = olds.length === news.length;
    for (var i = 0; same && i < olds.length; i++) {
      same = olds[i].tagName === news[i].tagName && olds[i].id === news[i].id;
    }
    if (!same) {
      current.replaceChildren.apply(current, Array.prototype.slice.call(fresh.childNodes));
      return;
    }
    var pairs = [];
    for (var j = 0; j < olds.length; j++) {
      if (!olds[j].isEqualNode(news[j])) { pairs.push([olds[j], news[j]]); }
    }
    pairs.forEach(function (pair) { pair[0].replaceWith(document.adoptNode(pair[1])); });
  }

  function refresh() {
    if (document.hidden) { return; }
    var root = content();
    if (root && (pressed || selecting(root))) {
      paused = true;
      show("refresh paused while text is selected");
      return;
    }
    paused = false;
    fetch(window.location.href, {
      credentials: "same-origin", cache: "no-store", headers: { "Accept": "text/html" }
    }).then(function (answer) {
      if (answer.redirected || answer.status === 401) { window.location.reload(); return null; }
      if (!answer.ok) { show("refresh failed (" + answer.status + "), retrying"); return null; }
      return answer.text();
    }).then(function (html) {
      if (html === null) { return; }
      var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("content");
      var current = content();
      if (!fresh || !current) { return; }
      // A selection made while the answer was on its way wins over this answer.
      if (pressed || selecting(current)) {
        paused = true;
        show("refresh paused while text is selected");
        return;
      }
      var state = remember(current);
      swap(current, fresh);
      restore(state, current);
      updated();
    }).catch(function () { show("receiver unreachable, retrying"); });
  }

  document.addEventListener("pointerdown", function () { pressed = true; }, true);
  document.addEventListener("pointerup", function () { pressed = false; }, true);
  document.addEventListener("pointercancel", function () { pressed = false; }, true);
  window.addEventListener("blur", function () { pressed = false; });
  // Once the selection is gone, the refresh it held back runs at once.
  document.addEventListener("selectionchange", function () {
    var root = content();
    if (paused && !pressed && root && !selecting(root)) { refresh(); }
  });
  window.setInterval(refresh, seconds * 1000);
}());
