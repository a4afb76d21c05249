/* dagger explorer: the tree of states, laid out by dagger's layout engine, explored in the browser.
 *
 * Data comes from <script id="dagger-data" type="application/json"> (an exported file) or from
 * /api/data (served by `dagger ui`, polled through /api/version for live updates). Only states on
 * screen become DOM elements (each with data-sha), so 10,000 states stay fluid. Hand-written: no
 * framework, nothing fetched from the network. */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var SERVED = !document.getElementById("dagger-data");
  var D = null;            // the data (see dagger/ui/data.py)
  var boxes = [];          // layout boxes
  var byId = {};           // sha -> box
  var kids = {};           // sha -> [child sha]
  var view = { x: 20, y: 20, k: 1 };
  var matches = null;      // Set of shas matching the filter, or null (no filter)
  var collapsed = {};      // sha -> true
  var hiddenByFold = {};   // sha -> true (a collapsed ancestor)
  var selected = null, second = null;
  var highlighted = {};    // sha -> true (from the table)
  var colourBy = "status";
  var scale = null;        // {key, min, max}
  var shown = new Map();   // sha -> element now in the DOM
  var pending = false;
  var LOD = 0.4;           // below this zoom, boxes are drawn without text

  // ---- helpers -------------------------------------------------------------------------------

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]); }
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function bytes(n) {
    if (!isNum(n)) return "-";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n < 10 ? 2 : 1) : String(n)) + " " + u[i];
  }
  function when(ts) { return isNum(ts) ? new Date(ts * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "-"; }
  function call(s) {
    var p = Object.keys(s.props).map(function (k) { return k + "=" + fmt(s.props[k]); }).join(", ");
    return s.recipe + "(" + p + ")";
  }

  // ---- the tag filter: the semantics of NodeSet.filter -----------------------------------------
  // An expression is alternatives joined by "|"; each is patterns joined by "&". A pattern is an
  // fnmatch pattern matched against each tag (the whole tag); a leading "!" negates it (no tag
  // matches). A state matches an alternative when all its patterns match, the expression when any
  // alternative does: `a & b | c` is nodes.filter("a", "b") | nodes.filter("c").

  function globToRegex(pat) {
    var out = "", i = 0, n = pat.length;
    while (i < n) {
      var c = pat[i++];
      if (c === "*") { out += ".*"; while (pat[i] === "*") i++; }
      else if (c === "?") out += ".";
      else if (c === "[") {
        var j = i;
        if (j < n && pat[j] === "!") j++;
        if (j < n && pat[j] === "]") j++;
        while (j < n && pat[j] !== "]") j++;
        if (j >= n) { out += "\\["; }
        else {
          var stuff = pat.slice(i, j).replace(/\\/g, "\\\\");
          i = j + 1;
          if (stuff[0] === "!") stuff = "^" + stuff.slice(1);
          else if (stuff[0] === "^") stuff = "\\" + stuff;
          out += "[" + stuff + "]";
        }
      } else out += c.replace(/[-\/\\^$*+?.()|[\]{}]/g, "\\$&");
    }
    return new RegExp("^(?:" + out + ")$", "s");
  }

  function parseFilter(text) {
    var alts = [];
    text.split("|").forEach(function (alt) {
      var pats = alt.split("&").map(function (p) { return p.trim(); }).filter(function (p) { return p.length; });
      if (pats.length) alts.push(pats.map(function (p) {
        var neg = p[0] === "!";
        return { neg: neg, rx: globToRegex(neg ? p.slice(1).trim() : p) };
      }));
    });
    return alts;
  }

  function matchFilter(text) {
    var alts = parseFilter(text || "");
    var out = [];
    if (!alts.length) return D.order.slice();
    D.order.forEach(function (sha) {
      var tags = D.states[sha].tags;
      var ok = alts.some(function (pats) {
        return pats.every(function (p) {
          var hit = tags.some(function (t) { return p.rx.test(t); });
          return p.neg ? !hit : hit;
        });
      });
      if (ok) out.push(sha);
    });
    return out;
  }

  function applyFilter() {
    var text = $("filter").value;
    try {
      matches = text.trim() ? new Set(matchFilter(text)) : null;
      $("filter").classList.remove("bad");
    } catch (e) {
      $("filter").classList.add("bad");
      matches = null;
    }
    updateCount();
    refreshAll();
    if (!$("table-pane").hidden) renderTable();
    if (!$("plot-pane").hidden) renderPlot();
  }

  function updateCount() {
    var n = D.order.length;
    var text = matches ? matches.size + " of " + n + " states" : n + " states";
    var failed = D.failed || [];
    if (failed.length) text += ", " + failed.length + " failed at their last attempt";
    $("count").textContent = text;
    $("count").title = failed.map(function (f) {
      return "failed " + String(f.sha || "?").slice(0, 10) + " " + (f.label || "?") + ": " + (f.error || "");
    }).join("\n");
    $("count").setAttribute("data-failed", String(failed.length));
  }

  // ---- colours -----------------------------------------------------------------------------------

  var RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]; // viridis stops
  function ramp(t) {
    t = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
    var i = Math.min(Math.floor(t), RAMP.length - 2), f = t - i, a = RAMP[i], b = RAMP[i + 1];
    return [0, 1, 2].map(function (j) { return Math.round(a[j] + (b[j] - a[j]) * f); });
  }
  function rgb(c, alpha) { return alpha === undefined ? "rgb(" + c.join(",") + ")" : "rgba(" + c.join(",") + "," + alpha + ")"; }
  function tint(c, w) { return rgb(c.map(function (v) { return Math.round(255 - (255 - v) * w); })); }

  function colours(box) {
    var sc = D.layout.status_colours;
    if (colourBy === "status" || box.summary) return sc[box.status] || sc.ok;
    var v = D.states[box.id].results[colourBy];
    if (!isNum(v) || !scale) return ["#f4f4f4", "#b0b0b0"];
    var t = scale.max > scale.min ? (v - scale.min) / (scale.max - scale.min) : 0.5;
    var c = ramp(t);
    return [tint(c, 0.38), rgb(c)];
  }

  function setColour(key) {
    colourBy = key;
    scale = null;
    var legend = $("legend");
    legend.textContent = "";
    if (key !== "status") {
      var vals = D.order.map(function (s) { return D.states[s].results[key]; }).filter(isNum);
      if (vals.length) scale = { min: Math.min.apply(null, vals), max: Math.max.apply(null, vals) };
      legend.appendChild(el("div", null, key));
      var bar = el("div", { "class": "ramp" });
      bar.style.background = "linear-gradient(to right," + [0, 0.25, 0.5, 0.75, 1].map(function (t) { return tint(ramp(t), 0.38); }).join(",") + ")";
      legend.appendChild(bar);
      var ends = el("div", { "class": "ends" });
      ends.appendChild(el("span", null, scale ? fmt(scale.min) : "-"));
      ends.appendChild(el("span", null, scale ? fmt(scale.max) : "-"));
      legend.appendChild(ends);
    } else {
      var sc = D.layout.status_colours;
      ["root", "ok", "function failed", "failed"].forEach(function (s) {
        var sw = el("span", { "class": "sw" });
        sw.style.background = sc[s][0]; sw.style.borderColor = sc[s][1];
        legend.appendChild(sw);
        legend.appendChild(document.createTextNode(s === "ok" ? "done" : s));
      });
    }
    legend.hidden = false;
    refreshAll();
  }

  // ---- the tree -----------------------------------------------------------------------------------

  function indexLayout() {
    boxes = D.layout.boxes;
    byId = {}; kids = {};
    boxes.forEach(function (b) {
      byId[b.id] = b;
      if (b.parent) (kids[b.parent] = kids[b.parent] || []).push(b.id);
    });
    computeFolds();
  }

  function computeFolds() {
    hiddenByFold = {};
    Object.keys(collapsed).forEach(function (sha) {
      if (!byId[sha]) { delete collapsed[sha]; return; }
      var stack = (kids[sha] || []).slice();
      while (stack.length) {
        var s = stack.pop();
        hiddenByFold[s] = true;
        (kids[s] || []).forEach(function (k) { stack.push(k); });
      }
    });
  }

  function descendants(sha) {
    var n = 0, stack = (kids[sha] || []).slice();
    while (stack.length) { var s = stack.pop(); n++; (kids[s] || []).forEach(function (k) { stack.push(k); }); }
    return n;
  }

  function isHidden(sha) {
    if (hiddenByFold[sha]) return true;
    return !!(matches && !matches.has(sha) && $("filter-mode").value === "hide");
  }

  function makeNode(b) {
    var styles = D.layout.styles;
    var e = el("div", { "class": "node", "data-sha": b.id });
    e.style.left = b.x + "px"; e.style.top = b.y + "px";
    e.style.width = b.width + "px"; e.style.height = b.height + "px";
    b.spans.forEach(function (s) {
      var st = styles[s.style] || styles.props;
      var sp = el("span", { "class": "t-" + s.style }, s.text);
      sp.style.left = (s.x - b.x) + "px";
      sp.style.top = (s.y - b.y - 0.846 * st.size) + "px";
      sp.style.fontSize = st.size + "px";
      sp.style.color = st.colour;
      if (st.bold) sp.style.fontWeight = "bold";
      e.appendChild(sp);
    });
    if (kids[b.id]) {
      var f = el("span", { "class": "fold", "data-fold": b.id, title: "collapse or expand this subtree" });
      e.appendChild(f);
    }
    return e;
  }

  function styleNode(e, b) {
    var c = colours(b);
    e.style.background = c[0];
    e.style.borderColor = c[1];
    var sha = b.id;
    e.hidden = isHidden(sha);
    e.classList.toggle("dim", !!(matches && !matches.has(sha)));
    e.classList.toggle("sel", sha === selected);
    e.classList.toggle("sel2", sha === second);
    e.classList.toggle("hl", !!highlighted[sha]);
    e.classList.toggle("marked", !!b.marked);
    e.classList.toggle("lod", view.k < LOD);
    var f = e.querySelector(".fold");
    if (f) f.textContent = collapsed[sha] ? "+" + descendants(sha) : "−";
  }

  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; render(); });
  }

  function refreshAll() {
    shown.forEach(function (e, sha) { if (byId[sha]) styleNode(e, byId[sha]); });
    render();
  }

  function render() {
    var world = $("world");
    world.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.k + ")";
    var r = $("view").getBoundingClientRect();
    var pad = 60 / view.k;
    var x0 = -view.x / view.k - pad, y0 = -view.y / view.k - pad;
    var x1 = x0 + r.width / view.k + 2 * pad, y1 = y0 + r.height / view.k + 2 * pad;
    var want = new Set();
    var layer = $("nodes");
    for (var i = 0; i < boxes.length; i++) {
      var b = boxes[i];
      if (b.x > x1 || b.y > y1 || b.x + b.width < x0 || b.y + b.height < y0) continue;
      if (hiddenByFold[b.id]) continue;
      want.add(b.id);
      var e = shown.get(b.id);
      if (!e) { e = makeNode(b); shown.set(b.id, e); layer.appendChild(e); styleNode(e, b); }
      else if (e.classList.contains("lod") !== (view.k < LOD)) styleNode(e, b);
    }
    shown.forEach(function (e, sha) { if (!want.has(sha)) { e.remove(); shown.delete(sha); } });
    drawEdges(x0, y0, x1, y1);
  }

  function drawEdges(x0, y0, x1, y1) {
    var d = [], h = [];
    D.layout.edges.forEach(function (ed) {
      var pts = ed.points, tip = ed.head[0];
      var ex0 = Infinity, ex1 = -Infinity, ey0 = Infinity, ey1 = -Infinity;
      pts.concat([tip]).forEach(function (p) {
        ex0 = Math.min(ex0, p[0]); ex1 = Math.max(ex1, p[0]); ey0 = Math.min(ey0, p[1]); ey1 = Math.max(ey1, p[1]);
      });
      if (ex1 < x0 || ex0 > x1 || ey1 < y0 || ey0 > y1) return;
      if (isHidden(ed.child) || isHidden(ed.parent)) return;
      d.push("M" + pts.map(function (p) { return p[0] + " " + p[1]; }).join("L"));
      h.push("M" + ed.head.map(function (p) { return p[0] + " " + p[1]; }).join("L") + "Z");
    });
    $("edge-path").setAttribute("d", d.join(""));
    $("edge-heads").setAttribute("d", h.join(""));
  }

  function fit() {
    var r = $("view").getBoundingClientRect();
    var w = D.layout.width || 1, hgt = D.layout.height || 1;
    var k = Math.min((r.width - 20) / w, Math.max((r.height - 40) / hgt, 0.5), 1.1);
    k = Math.max(k, boxes.length > 2000 ? 0.15 : 0.05);
    view.k = k;
    view.x = Math.max((r.width - w * k) / 2, 10);
    view.y = Math.max(Math.min((r.height - hgt * k) / 2, 20), 8);
    schedule();
  }

  function centreOn(sha) {
    var b = byId[sha];
    if (!b) return;
    var r = $("view").getBoundingClientRect();
    if (view.k < 0.6) view.k = 0.9;
    view.x = r.width / 2 - (b.x + b.width / 2) * view.k;
    view.y = r.height / 3 - (b.y + b.height / 2) * view.k;
    schedule();
  }

  function bindView() {
    var v = $("view"), drag = null;
    v.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0) return;
      drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, moved: false };
    });
    window.addEventListener("pointermove", function (ev) {
      if (!drag) return;
      var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      drag.moved = true;
      v.classList.add("dragging");
      view.x = drag.vx + dx; view.y = drag.vy + dy;
      schedule();
    });
    window.addEventListener("pointerup", function () {
      if (drag && drag.moved) { v.dataset.dragged = "1"; setTimeout(function () { delete v.dataset.dragged; }, 0); }
      drag = null; v.classList.remove("dragging");
    });
    v.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var r = v.getBoundingClientRect();
      var mx = ev.clientX - r.left, my = ev.clientY - r.top;
      var k = Math.max(0.03, Math.min(4, view.k * Math.exp(-ev.deltaY * 0.0015)));
      view.x = mx - (mx - view.x) * (k / view.k);
      view.y = my - (my - view.y) * (k / view.k);
      view.k = k;
      schedule();
    }, { passive: false });
    v.addEventListener("click", function (ev) {
      if (v.dataset.dragged) return;
      var f = ev.target.closest("[data-fold]");
      if (f) {
        var s = f.getAttribute("data-fold");
        if (collapsed[s]) delete collapsed[s]; else collapsed[s] = true;
        computeFolds(); refreshAll();
        ev.stopPropagation();
        return;
      }
      var n = ev.target.closest("[data-sha]");
      if (!n) return;
      var sha = n.getAttribute("data-sha");
      if ((ev.shiftKey || ev.ctrlKey || ev.metaKey) && selected && selected !== sha) { second = sha; }
      else { selected = sha; second = null; }
      refreshAll();
      showPanel();
    });
    window.addEventListener("resize", schedule);
    document.addEventListener("keydown", function (ev) {
      if (ev.target && /^(INPUT|SELECT|TEXTAREA)$/.test(ev.target.tagName)) return;
      if (ev.key === "Escape" && !$("panel").hidden) {
        if (second) { second = null; showPanel(); } else { $("panel").hidden = true; selected = null; }
        refreshAll(); schedule();
      } else if (ev.key === "f") fit();
      else if (ev.key === "/") { ev.preventDefault(); $("filter").focus(); }
    });
  }

  // ---- the panel: one state, or two side by side --------------------------------------------------

  function kv(table, key, value, cls) {
    var tr = el("tr", cls ? { "class": cls } : null);
    tr.appendChild(el("td", null, key));
    var td = el("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = fmt(value);
    tr.appendChild(td);
    table.appendChild(tr);
    return tr;
  }
  function section(p, title, obj, attr) {
    p.appendChild(el("h3", null, title));
    var keys = Object.keys(obj || {});
    if (!keys.length) { p.appendChild(el("div", { "class": "note" }, "-")); return; }
    var t = el("table", attr || null);
    keys.forEach(function (k) { kv(t, k, obj[k]); });
    p.appendChild(t);
  }
  function lineage(sha) {
    var out = [];
    while (sha && D.states[sha]) { out.unshift(sha); sha = D.states[sha].parent; }
    return out;
  }
  function flatten(obj, prefix, out) {
    out = out || {};
    Object.keys(obj || {}).forEach(function (k) {
      var key = prefix ? prefix + "." + k : k, v = obj[k];
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flatten(v, key, out);
      else out[key] = v;
    });
    return out;
  }
  function environment(sha) {
    var env = flatten(D.experiment.environment);
    var own = flatten(D.states[sha].environment);
    Object.keys(own).forEach(function (k) { env[k] = own[k]; });
    delete env.time;
    return env;
  }
  function statusBadge(s) {
    var c = D.layout.status_colours[s.status] || D.layout.status_colours.ok;
    var b = el("span", { "class": "status" }, s.status === "ok" ? "done" : s.status);
    b.style.background = c[0]; b.style.borderColor = c[1];
    return b;
  }
  function goto(sha) { selected = sha; second = null; centreOn(sha); refreshAll(); showPanel(); }

  function showPanel() {
    var p = $("panel");
    p.textContent = "";
    p.removeAttribute("data-diff");
    p.removeAttribute("data-state");
    p.hidden = false;
    var close = el("button", { "class": "close", type: "button", title: "close" }, "×");
    close.addEventListener("click", function () { p.hidden = true; selected = second = null; refreshAll(); schedule(); });
    p.appendChild(close);
    if (selected && second) showDiff(p); else if (selected) showState(p, selected);
    schedule();
  }

  function showState(p, sha) {
    var s = D.states[sha];
    p.setAttribute("data-state", sha);
    p.appendChild(el("h2", null, call(s)));
    p.appendChild(el("div", { "class": "hash", "data-full-hash": "" }, sha));
    var t = el("table");
    kv(t, "status", statusBadge(s));
    var tags = el("span");
    s.tags.forEach(function (g) { tags.appendChild(el("span", { "class": "tag" }, g)); });
    kv(t, "tags", s.tags.length ? tags : "-");
    if (s.recipe_class) kv(t, "class", s.recipe_class + "  (version " + fmt(s.recipe_version) + ")");
    if (s.recipe_source) kv(t, "source", el("span", { "class": "hash" }, s.recipe_source));
    kv(t, "depth", s.depth);
    p.appendChild(t);
    section(p, "recipe properties", s.props);
    section(p, "properties", s.properties);
    p.appendChild(el("h3", null, "lineage (root first)"));
    var ol = el("ol", { "data-lineage": "" });
    lineage(sha).forEach(function (step) {
      var li = el("li", { "data-goto": step, "class": step === sha ? "here" : null });
      li.appendChild(el("span", { "class": "short" }, step.slice(0, 10) + "  "));
      li.appendChild(document.createTextNode(call(D.states[step])));
      li.addEventListener("click", function () { goto(step); });
      ol.appendChild(li);
    });
    p.appendChild(ol);
    var ch = kids[sha] || [];
    if (ch.length) {
      p.appendChild(el("h3", null, "children"));
      var cl = el("ol");
      ch.forEach(function (c) {
        var li = el("li", { "data-goto": c });
        li.appendChild(el("span", { "class": "short" }, c.slice(0, 10) + "  "));
        li.appendChild(document.createTextNode(call(D.states[c])));
        li.addEventListener("click", function () { goto(c); });
        cl.appendChild(li);
      });
      p.appendChild(cl);
    }
    section(p, "results", s.results, { "data-results": "" });
    if (Object.keys(s.function_errors).length) section(p, "function errors", s.function_errors);
    p.appendChild(el("h3", null, "timings"));
    var tt = el("table");
    kv(tt, "created", when(s.created));
    kv(tt, "started", when(s.run.start));
    kv(tt, "finished", when(s.run.end));
    kv(tt, "duration", isNum(s.run.duration) ? s.run.duration.toFixed(3) + " s" : "-");
    kv(tt, "worker", s.run.worker || "-");
    p.appendChild(tt);
    p.appendChild(el("h3", null, "stored size"));
    var st = el("table");
    kv(st, "total", bytes(s.stored_bytes));
    kv(st, "pickle", s.pickle_bytes === null ? "in its own file" : bytes(s.pickle_bytes));
    kv(st, "blobs", String(s.blobs));
    p.appendChild(st);
    section(p, "environment", environment(sha));
    p.appendChild(el("div", { "class": "note" }, "shift-click another state to compare it with this one"));
  }

  function showDiff(p) {
    var a = selected, b = second, A = D.states[a], B = D.states[b];
    p.setAttribute("data-diff", "");
    p.appendChild(el("h2", null, "A / B"));
    [["A", a], ["B", b]].forEach(function (x) {
      var d = el("div");
      d.appendChild(el("b", null, x[0] + "  "));
      d.appendChild(el("span", { "class": "hash", "data-full-hash": "" }, x[1]));
      d.appendChild(el("div", null, call(D.states[x[1]]) + (D.states[x[1]].tags.length ? "  [" + D.states[x[1]].tags.join(", ") + "]" : "")));
      p.appendChild(d);
    });
    var la = lineage(a), lb = lineage(b), common = 0;
    while (common < Math.min(la.length, lb.length) && la[common] === lb[common]) common++;
    var fork = common ? la[common - 1] : null;
    var msg = fork ? "lineages part after " + fork.slice(0, 10) + " " + call(D.states[fork]) + " (depth " + D.states[fork].depth + ")" : "the two states share no ancestor";
    if (fork === a) msg += "; A is an ancestor of B";
    if (fork === b) msg += "; B is an ancestor of A";
    var m = el("p", { "data-fork": fork || "" }, msg);
    p.appendChild(m);
    var t = el("table");
    var head = el("tr");
    head.appendChild(el("td", null, ""));
    head.appendChild(el("td", { "class": "diffcol" }, "A"));
    head.appendChild(el("td", { "class": "diffcol" }, "B"));
    t.appendChild(head);
    var rows = 0;
    function row(name, va, vb) {
      var tr = el("tr", { "class": "changed", "data-diff-key": name });
      tr.appendChild(el("td", null, name));
      tr.appendChild(el("td", null, va));
      tr.appendChild(el("td", null, vb));
      t.appendChild(tr);
      rows++;
    }
    for (var i = common; i < Math.max(la.length, lb.length); i++) {
      row("step " + i, i < la.length ? call(D.states[la[i]]) : "-", i < lb.length ? call(D.states[lb[i]]) : "-");
    }
    function cmp(title, da, db, bare) {
      var keys = Object.keys(da).concat(Object.keys(db).filter(function (k) { return !(k in da); }));
      keys.forEach(function (k) {
        var va = da[k], vb = db[k];
        if (JSON.stringify(va) === JSON.stringify(vb)) return;
        var extra = isNum(va) && isNum(vb) && typeof va !== "boolean" ? "  (B-A " + fmt(vb - va) + ")" : "";
        row(bare ? k : title + "." + k, k in da ? fmt(va) : "-", (k in db ? fmt(vb) : "-") + extra);
      });
    }
    cmp("properties", A.properties, B.properties);
    cmp("tags", { tags: A.tags.join(", ") }, { tags: B.tags.join(", ") }, true);
    cmp("results", A.results, B.results, true);
    var fa = {}, fb = {};
    ["recipe_class", "recipe_version", "recipe_source"].forEach(function (k) {
      if (A[k] !== null && A[k] !== undefined) fa[k.slice(7)] = A[k];
      if (B[k] !== null && B[k] !== undefined) fb[k.slice(7)] = B[k];
    });
    cmp("recipe", fa, fb);
    cmp("environment", environment(a), environment(b));
    if (rows) p.appendChild(t);
    else p.appendChild(el("p", null, "no differences in recipes, properties or results"));
  }

  // ---- the results table --------------------------------------------------------------------------

  var sortCol = null, sortDir = 1, MAX_ROWS = 1000;

  function tableRows() {
    var q = $("table-filter").value.trim().toLowerCase();
    var shas = D.order.filter(function (s) { return (!matches || matches.has(s)) && !hiddenByFold[s]; });
    if (q) shas = shas.filter(function (s) {
      var r = D.states[s].row;
      return Object.keys(r).some(function (k) { return fmt(r[k]).toLowerCase().indexOf(q) >= 0; });
    });
    if (sortCol) {
      shas.sort(function (x, y) {
        var a = D.states[x].row[sortCol], b = D.states[y].row[sortCol];
        var an = a === undefined || a === null || a === "", bn = b === undefined || b === null || b === "";
        if (an || bn) return an === bn ? 0 : (an ? 1 : -1);  // empty cells last either way
        if (isNum(a) && isNum(b)) return (a - b) * sortDir;
        return String(a).localeCompare(String(b)) * sortDir;
      });
    }
    return shas;
  }

  function renderTable() {
    var cols = D.columns.filter(function (c) { return c !== "sha"; });
    var thead = $("results").tHead, tbody = $("results").tBodies[0];
    thead.textContent = ""; tbody.textContent = "";
    var hr = el("tr");
    cols.forEach(function (c) {
      var th = el("th", { "data-col": c, "class": c === sortCol ? (sortDir > 0 ? "asc" : "desc") : null }, c);
      th.addEventListener("click", function () {
        if (sortCol === c) sortDir = -sortDir; else { sortCol = c; sortDir = 1; }
        renderTable();
      });
      hr.appendChild(th);
    });
    thead.appendChild(hr);
    var shas = tableRows();
    var frag = document.createDocumentFragment();
    shas.slice(0, MAX_ROWS).forEach(function (s) {
      var r = D.states[s].row, tr = el("tr", { "data-row": s, "class": s === selected ? "sel" : null });
      cols.forEach(function (c) { tr.appendChild(el("td", { "class": isNum(r[c]) ? "num" : null }, fmt(r[c]))); });
      tr.addEventListener("click", function () { goto(s); renderTable(); });
      frag.appendChild(tr);
    });
    tbody.appendChild(frag);
    $("table-count").textContent = shas.length > MAX_ROWS ? "first " + MAX_ROWS + " of " + shas.length + " rows" : shas.length + " rows";
    highlighted = {};
    if ($("table-highlight").checked && ($("table-filter").value.trim() || selected)) {
      if ($("table-filter").value.trim()) shas.forEach(function (s) { highlighted[s] = true; });
    }
    refreshAll();
  }

  // ---- the plot: y against x along each branch, as `dagger plot` draws it --------------------------

  function values(sha) {
    var s = D.states[sha], v = {};
    Object.keys(s.row).forEach(function (k) { v[k] = s.row[k]; });
    Object.keys(s.raw_results).forEach(function (fn) {
      var r = s.raw_results[fn];
      if (r && typeof r === "object" && !Array.isArray(r)) Object.keys(r).forEach(function (k) { v[k] = r[k]; v[fn + "." + k] = r[k]; });
      else v[fn] = r;
    });
    return v;
  }
  function lookup(v, name) {
    if (name in v) return v[name];
    var found = Object.keys(v).filter(function (k) { return k.slice(-name.length - 1) === "." + name; });
    return found.length ? v[found[found.length - 1]] : undefined;
  }
  function leavesInOrder() {
    var roots = D.order.filter(function (s) { return !D.states[s].parent; });
    var out = [], stack = roots.slice().reverse();
    while (stack.length) {
      var n = stack.pop(), ch = kids[n] || [];
      if (!ch.length) out.push(n);
      for (var i = ch.length - 1; i >= 0; i--) stack.push(ch[i]);
    }
    return out;
  }
  function branches(x, y, includeRoot) {
    var out = [], drawn = new Set(), labels = {};
    leavesInOrder().forEach(function (leaf) {
      var pts = [];
      lineage(leaf).forEach(function (step) {
        if ((!D.states[step].parent && !includeRoot) || (matches && !matches.has(step))) return;
        var v = values(step), vx = lookup(v, x), vy = lookup(v, y);
        if (isNum(vx) && isNum(vy) && typeof vx !== "boolean" && typeof vy !== "boolean") pts.push([step, vx, vy]);
      });
      var shared = [];
      pts.forEach(function (p, i) { if (drawn.has(p[0])) shared.push(i); });
      var start = shared.length ? shared[shared.length - 1] : 0;
      if (!pts.length || (shared.length && start === pts.length - 1)) return;
      pts = pts.slice(start);
      pts.forEach(function (p) { drawn.add(p[0]); });
      var s = D.states[leaf];
      var label = s.tags.length ? s.tags.join(", ") : s.recipe + " " + leaf.slice(0, 8);
      labels[label] = (labels[label] || 0) + 1;
      if (labels[label] > 1) label += " (" + leaf.slice(0, 8) + ")";
      out.push({ label: label, leaf: leaf, pts: pts });
    });
    return out;
  }

  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  function svg(tag, attrs, text) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { return [lo]; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n))), err = (hi - lo) / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
    return out;
  }

  function numericKeys() {
    var keys = {};
    D.order.forEach(function (s) {
      var v = values(s);
      Object.keys(v).forEach(function (k) { if (isNum(v[k]) && typeof v[k] !== "boolean" && k !== "depth") keys[k] = true; });
    });
    return Object.keys(keys);
  }

  function fillPlotSelects() {
    var keys = numericKeys(), sx = $("plot-x"), sy = $("plot-y"), px = sx.value, py = sy.value;
    var results = Object.keys(resultKeys());
    [sx, sy].forEach(function (s) { s.textContent = ""; keys.forEach(function (k) { s.appendChild(el("option", { value: k }, k)); }); });
    sx.value = keys.indexOf(px) >= 0 ? px : (results[1] || keys[0] || "");
    sy.value = keys.indexOf(py) >= 0 ? py : (results[0] || keys[1] || "");
  }

  function renderPlot() {
    var g = $("plot"), x = $("plot-x").value, y = $("plot-y").value;
    g.textContent = "";
    var box = g.getBoundingClientRect();
    var W = Math.max(box.width, 420), H = Math.max(box.height, 200), L = 62, R = 240, T = 16, B = 42;
    g.setAttribute("viewBox", "0 0 " + W + " " + H);
    var lines = x && y ? branches(x, y, $("plot-root").checked) : [];
    g.setAttribute("data-branches", String(lines.length));
    if (!lines.length) { g.appendChild(svg("text", { x: L, y: 40 }, "no state has both " + x + " and " + y)); return; }
    var xs = [], ys = [];
    lines.forEach(function (l) { l.pts.forEach(function (p) { xs.push(p[1]); ys.push(p[2]); }); });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    var mx = (x1 - x0) * 0.04, my = (y1 - y0) * 0.06;
    x0 -= mx; x1 += mx; y0 -= my; y1 += my;
    var sx = function (v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
    var sy = function (v) { return H - B - (v - y0) / (y1 - y0) * (H - T - B); };
    ticks(x0, x1, 6).forEach(function (t) {
      g.appendChild(svg("line", { "class": "grid", x1: sx(t), x2: sx(t), y1: T, y2: H - B }));
      g.appendChild(svg("text", { x: sx(t), y: H - B + 15, "text-anchor": "middle" }, fmt(t)));
    });
    ticks(y0, y1, 5).forEach(function (t) {
      g.appendChild(svg("line", { "class": "grid", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }));
      g.appendChild(svg("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t)));
    });
    g.appendChild(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", "class": "axis" }));
    g.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, x));
    g.appendChild(svg("text", { x: 14, y: (T + H - B) / 2, transform: "rotate(-90 14 " + (T + H - B) / 2 + ")", "text-anchor": "middle" }, y));
    lines.forEach(function (l, i) {
      var c = PALETTE[i % PALETTE.length];
      var grp = svg("g", { "data-branch": l.leaf });
      grp.appendChild(svg("polyline", { "class": "line", stroke: c, points: l.pts.map(function (p) { return sx(p[1]) + "," + sy(p[2]); }).join(" ") }));
      l.pts.forEach(function (p) {
        var dot = svg("circle", { cx: sx(p[1]), cy: sy(p[2]), r: 3.5, fill: c, "data-point": p[0] });
        dot.appendChild(svg("title", {}, l.label + "\n" + x + "=" + fmt(p[1]) + ", " + y + "=" + fmt(p[2])));
        dot.addEventListener("click", function () { goto(p[0]); });
        dot.style.cursor = "pointer";
        grp.appendChild(dot);
      });
      g.appendChild(grp);
      if (i < 16) {
        var ly = T + 8 + i * 16;
        g.appendChild(svg("line", { x1: W - R + 12, x2: W - R + 30, y1: ly, y2: ly, stroke: c, "stroke-width": 2 }));
        g.appendChild(svg("text", { x: W - R + 35, y: ly + 4 }, l.label.length > 32 ? l.label.slice(0, 31) + "…" : l.label));
      }
    });
  }

  // ---- drawer -------------------------------------------------------------------------------------

  function openPane(which) {
    var dr = $("drawer"), t = $("table-pane"), pl = $("plot-pane");
    var same = !dr.hidden && ((which === "table" && !t.hidden) || (which === "plot" && !pl.hidden));
    dr.hidden = same;
    t.hidden = which !== "table" || same;
    pl.hidden = which !== "plot" || same;
    $("show-table").classList.toggle("on", !t.hidden);
    $("show-plot").classList.toggle("on", !pl.hidden);
    $("drawer-title").textContent = which === "table" ? "results" : "plot: y against x along each branch";
    if (!t.hidden) renderTable(); else { highlighted = {}; refreshAll(); }
    if (!pl.hidden) { fillPlotSelects(); renderPlot(); }
    schedule();
  }

  // ---- start, and live updates -------------------------------------------------------------------

  function resultKeys() {
    var keys = {};
    D.order.forEach(function (s) {
      var r = D.states[s].results;
      Object.keys(r).forEach(function (k) { if (isNum(r[k])) keys[k] = true; });
    });
    return keys;
  }

  function fillColourSelect() {
    var s = $("colour-by"), cur = s.value;
    s.textContent = "";
    s.appendChild(el("option", { value: "status" }, "status"));
    Object.keys(resultKeys()).forEach(function (k) { s.appendChild(el("option", { value: k }, k)); });
    s.value = Array.prototype.some.call(s.options, function (o) { return o.value === cur; }) ? cur : "status";
  }

  function load(data, first) {
    D = data;
    if (!first) { shown.forEach(function (e) { e.remove(); }); shown.clear(); }
    indexLayout();
    $("where").textContent = D.experiment.directory;
    $("where").title = D.experiment.directory;
    if (selected && !D.states[selected]) selected = null;
    if (second && !D.states[second]) second = null;
    fillColourSelect();
    setColour($("colour-by").value);
    applyFilter();
    if (first) fit();
    if (!$("panel").hidden && selected) showPanel();
    if (!$("table-pane").hidden && !$("drawer").hidden) renderTable();
    if (!$("plot-pane").hidden && !$("drawer").hidden) { fillPlotSelects(); renderPlot(); }
    document.body.setAttribute("data-version", D.version || "");
    document.body.setAttribute("data-states", String(D.order.length));
    schedule();
  }

  function poll() {
    fetch("api/version", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (v) {
      $("live").hidden = false;
      if (v.version !== D.version) {
        return fetch("api/data", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (d) { load(d, false); });
      }
    }).catch(function () { $("live").hidden = true; }).then(function () { setTimeout(poll, 1000); });
  }

  function start(data) {
    bindView();
    $("filter").addEventListener("input", applyFilter);
    $("filter-mode").addEventListener("change", applyFilter);
    $("colour-by").addEventListener("change", function () { setColour($("colour-by").value); });
    $("fit").addEventListener("click", fit);
    $("show-table").addEventListener("click", function () { openPane("table"); });
    $("show-plot").addEventListener("click", function () { openPane("plot"); });
    $("drawer-close").addEventListener("click", function () { $("drawer").hidden = true; $("show-table").classList.remove("on"); $("show-plot").classList.remove("on"); highlighted = {}; refreshAll(); schedule(); });
    $("table-filter").addEventListener("input", renderTable);
    $("table-highlight").addEventListener("change", renderTable);
    ["plot-x", "plot-y", "plot-root"].forEach(function (id) { $(id).addEventListener("change", renderPlot); });
    load(data, true);
    window.dagger = { matchFilter: matchFilter, parseFilter: parseFilter, data: function () { return D; }, view: view, fit: fit, goto: goto, render: render };
    document.body.setAttribute("data-ready", "1");
    if (SERVED) setTimeout(poll, 1000);
  }

  if (SERVED) {
    fetch("api/data", { cache: "no-store" }).then(function (r) { return r.json(); }).then(start);
  } else {
    start(JSON.parse(document.getElementById("dagger-data").textContent));
  }
})();
