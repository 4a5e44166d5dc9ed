/* primus-lens report: draws the model embedded in #lens-data (primus_lens_inject/view/job.py).
 *
 * Every text from the record goes in with textContent (h() below), never as markup.  Line charts
 * are uPlot (vendored); heatmaps are drawn on a canvas, one pixel per cell, then scaled.  When it
 * is done the page writes what it drew into #lens-selfcheck (hidden JSON): the tests and the
 * scale bench read it with headless Chromium's --dump-dom.
 */
(function () {
  "use strict";
  var started = performance.now();
  var check = {errors: [], charts: [], heatmaps: [], stalls: [], skipped: null, render_ms: null};
  window.addEventListener("error", function (e) { check.errors.push(String(e.message)); });
  var consoleError = console.error;
  console.error = function () {
    check.errors.push(Array.prototype.map.call(arguments, String).join(" "));
    consoleError.apply(console, arguments);
  };

  var data = JSON.parse(document.getElementById("lens-data").textContent);
  var app = document.getElementById("app");
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                "#17becf", "#7f7f7f", "#bcbd22"];
  var EAGER_CHARTS = 60;  // beyond this many line charts, each is drawn when it scrolls into view
  var chartWidth = Math.max(320, Math.min(560, Math.floor((window.innerWidth - 80) / 2)));

  function h(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        if (k === "text") { node.textContent = String(props[k]); }
        else if (k === "cls") { node.className = props[k]; }
        else { node.setAttribute(k, String(props[k])); }
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) { continue; }
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function when(t) { return (t === null || t === undefined) ? "—" : new Date(t * 1000).toISOString().replace("T", " ").replace("Z", " UTC"); }
  function num(v) { return (v === null || v === undefined) ? "—" : String(v); }
  function short(v) {
    if (v === null || v === undefined) { return "—"; }
    var a = Math.abs(v);
    if (a >= 1e9) { return (v / 1e9).toPrecision(3) + "G"; }
    if (a >= 1e6) { return (v / 1e6).toPrecision(3) + "M"; }
    if (a >= 1e4) { return (v / 1e3).toPrecision(3) + "k"; }
    return String(Math.round(v * 1000) / 1000);
  }
  function table(headers, rows) {
    var head = h("tr", null);
    headers.forEach(function (x) { head.appendChild(h("th", {text: x})); });
    var body = h("tbody", null);
    rows.forEach(function (row) {
      var tr = h("tr", null);
      row.forEach(function (cell) {
        tr.appendChild(typeof cell === "object" && cell !== null ? h("td", null, cell) : h("td", {text: num(cell)}));
      });
      body.appendChild(tr);
    });
    return h("table", null, h("thead", null, head), body);
  }
  function section(id, title, note) {
    var s = h("section", {id: id}, h("h2", {text: title}));
    if (note) { s.appendChild(h("p", {cls: "note", text: note})); }
    app.appendChild(s);
    return s;
  }
  function nonBlank(canvas) {
    try {
      var ctx = canvas.getContext("2d");
      var img = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      var seen = 0;
      for (var i = 3; i < img.length; i += 4 * 7) { if (img[i] > 0) { seen++; } }
      return seen;
    } catch (e) { return -1; }
  }

  // -- the job --------------------------------------------------------------------------------
  function jobSection() {
    var job = data.job;
    var s = section("job", "The job");
    var seconds = job.start === null ? null : Math.round((job.end - job.start) * 10) / 10;
    s.appendChild(table(["runs", "owners", "ranks", "nodes", "rank directories", "from", "to", "duration (s)"],
      [[job.runs.length, job.owners.length, job.ranks, job.nodes, job.rank_dirs.length, when(job.start), when(job.end), seconds]]));
    s.appendChild(h("h3", {text: "Runs"}));
    s.appendChild(table(["run", "rows", "steps", "first row", "last row", "written in"],
      job.runs.map(function (r) { return [r.id, r.rows, r.steps[0] + " – " + r.steps[1], when(r.first), when(r.last), r.where.join(", ")]; })));
    s.appendChild(h("h3", {text: "Owners (who sends which run, and why)"}));
    s.appendChild(table(["where", "global rank", "runs", "sends", "key prefix", "identity", "why"],
      job.owners.map(function (o) {
        var who = o.identity && typeof o.identity === "object" ? Object.keys(o.identity).map(function (k) { return k + "=" + o.identity[k]; }).join(" ") : "";
        return [o.where, o.rank, (o.runs || []).join(", "), o.report ? "yes" : "no", o.key_prefix || "(plain keys)", who, o.reason];
      })));
    s.appendChild(h("h3", {text: "Frameworks detected"}));
    if (job.frameworks.length) {
      s.appendChild(table(["where", "run", "report", "wrapper", "base", "confidence", "why (indicators)"],
        job.frameworks.map(function (f) {
          var state = f.state === "acknowledged" ? "acknowledged " + when(f.acknowledged) : "waiting to be sent";
          return [f.where, f.run, state, [].concat(f.wrappers).join(", "), [].concat(f.bases).join(", "), f.confidence, [].concat(f.why).join("; ")];
        })));
    }
    s.appendChild(h("p", {cls: "note", text: job.detections_sent + " detection report(s) acknowledged by the Lens server" +
      (job.frameworks.length ? "; the verdict of the last acknowledged report of each job is kept beside its record, the waiting ones are shown until they are sent." :
        "; no verdict on disk: no report was built, or the records come from an injector that kept none after sending.")}));
    s.appendChild(h("h3", {text: "Delivery per sink"}));
    if (job.delivery.length) {
      s.appendChild(table(["where", "sink", "endpoint", "acknowledged rows", "pending rows", "dropped", "last error", "state", "status written"],
        job.delivery.map(function (d) {
          var dropped = Object.keys(d.dropped).map(function (k) { return k + ": " + d.dropped[k]; }).join("; ");
          return [d.where, d.sink, d.endpoint, d.acknowledged, d.pending, dropped || "0", d.last_error || "—", d.state, when(d.updated)];
        })));
    } else {
      s.appendChild(h("p", {text: "No status file: no process sent these records (reporting off, or the records were copied without their side files)."}));
    }
    var skipped = data.skipped;
    var p = h("p", {id: "skipped", cls: skipped.total ? "warn" : "note",
      text: skipped.total + " line(s) could not be read and were skipped" +
        (skipped.total ? ": " + Object.keys(skipped.reasons).map(function (k) { return k + " (" + skipped.reasons[k] + ")"; }).join(", ") : ".")});
    s.appendChild(p);
    check.skipped = skipped.total;
  }

  // -- line charts ----------------------------------------------------------------------------
  function aligned(runs) {
    if (runs.length === 1) { return [runs[0].x, runs[0].y]; }
    var xs = {};
    runs.forEach(function (r) { r.x.forEach(function (x) { xs[x] = true; }); });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var out = [x];
    runs.forEach(function (r) {
      var at = {};
      r.x.forEach(function (v, i) { at[v] = r.y[i]; });
      out.push(x.map(function (v) { return v in at ? at[v] : null; }));
    });
    return out;
  }
  function lineChart(target, title, seriesNames, plotData, xLabel, time) {
    var series = [{label: xLabel, value: time ? function (u, v) { return v == null ? "—" : when(v); } : function (u, v) { return num(v); }}];
    seriesNames.forEach(function (name, i) {
      series.push({label: name, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
                   points: {show: plotData[0].length < 60}, value: function (u, v) { return num(v); }});
    });
    return new uPlot({title: title, width: chartWidth, height: 220, series: series,
                      scales: {x: {time: !!time}}, legend: {live: true},
                      cursor: {drag: {x: true, y: false}}}, plotData, target);
  }
  var later = [];  // checks of what uPlot drew: it draws in a microtask queued at construction
  function selfCheckChart(u, key, runs, holder) {
    holder.setAttribute("data-drawn", "1");
    later.push(function () { checkChart(u, key, runs); });
  }
  function checkChart(u, key, runs) {
    // Put the cursor on the last point, and keep what the legend (the tooltip) then shows.
    var idx = u.data[0].length - 1;
    u.setCursor({left: u.valToPos(u.data[0][idx], "x"), top: 10});
    var shown = Array.prototype.map.call(u.root.querySelectorAll(".u-legend .u-value"), function (n) { return n.textContent; });
    var canvas = u.root.querySelector("canvas");
    var rect = canvas.getBoundingClientRect();
    check.charts.push({key: key, runs: runs, cursor_idx: u.cursor.idx, x: u.data[0][u.cursor.idx], legend: shown,
                       painted: nonBlank(canvas), rect: [rect.left + window.scrollX, rect.top + window.scrollY, rect.width, rect.height]});
  }
  function metricsSection() {
    var m = data.metrics;
    var keys = 0;
    m.groups.forEach(function (g) { keys += g.keys.length; });
    var s = section("metrics", "Logged keys against wandb's step",
      keys + " numeric key(s) in " + m.groups.length + " group(s); each line shows at most " + m.points_per_line +
      " points (LTTB: peaks kept, every point a value of the record). Drag across a chart to zoom, double-click to reset.");
    var filter = h("input", {type: "search", id: "filter", placeholder: "filter keys (substring)", size: 40});
    s.appendChild(h("p", null, filter));
    var nonFinite = Object.keys(m.non_finite);
    if (nonFinite.length) {
      s.appendChild(h("p", {cls: "warn", text: "Non-finite values (not drawn): " + nonFinite.map(function (k) { return k + " ×" + m.non_finite[k]; }).join(", ")}));
    }
    var holders = [];
    var lazy = keys > EAGER_CHARTS;
    var observer = lazy && "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { draw(e.target); observer.unobserve(e.target); } });
    }, {rootMargin: "400px"}) : null;
    function draw(holder) {
      if (holder.getAttribute("data-drawn")) { return; }
      var key = holder.getAttribute("data-key");
      var runs = m.series[key];
      var u = lineChart(holder, key, runs.map(function (r) { return r.label ? r.run : "run " + r.run + " (" + r.count + " rows)"; }), aligned(runs), "step", false);
      selfCheckChart(u, key, runs.map(function (r) { return r.run; }), holder);
    }
    m.groups.forEach(function (g) {
      var grid = h("div", {cls: "grid"});
      var details = h("details", {open: "", "data-group": g.name}, h("summary", {text: g.name + " (" + g.keys.length + ")"}), grid);
      s.appendChild(details);
      g.keys.forEach(function (key) {
        var holder = h("div", {cls: "chart", "data-key": key});
        grid.appendChild(holder);
        holders.push(holder);
      });
    });
    holders.forEach(function (holder) { if (observer) { observer.observe(holder); } else { draw(holder); } });
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase();
      holders.forEach(function (holder) { holder.hidden = q !== "" && holder.getAttribute("data-key").toLowerCase().indexOf(q) < 0; });
      Array.prototype.forEach.call(s.querySelectorAll("details"), function (d) {
        d.hidden = !Array.prototype.some.call(d.querySelectorAll(".chart"), function (c) { return !c.hidden; });
      });
    });
    if (m.others.length) {
      s.appendChild(h("h3", {text: "Keys that are not numbers (not charted)"}));
      s.appendChild(table(["key", "kind", "rows"], m.others.map(function (o) { return [o.key, o.kind, o.count]; })));
    }
  }

  // -- heatmaps -------------------------------------------------------------------------------
  var STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];  // viridis
  function colour(f) {
    var x = Math.max(0, Math.min(1, f)) * (STOPS.length - 1);
    var i = Math.min(STOPS.length - 2, Math.floor(x)), t = x - i;
    return STOPS[i].map(function (c, k) { return Math.round(c + (STOPS[i + 1][k] - c) * t); });
  }
  function heatmap(target, r, map, stalled) {
    var rows = map.rows, cols = r.columns, n = rows.length;
    var lo = Infinity, hi = -Infinity;
    rows.forEach(function (row) { row.forEach(function (v) { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }); });
    var flagged = {};
    map.outliers.forEach(function (o) { flagged[o.rank] = o; });
    var rowH = Math.max(2, Math.min(16, Math.floor(640 / n)));
    var labelW = rowH >= 9 ? 300 : 0;
    var width = Math.max(300, Math.min(1100, window.innerWidth - 60)) - labelW;
    var cells = document.createElement("canvas");
    cells.width = cols; cells.height = n;
    var cctx = cells.getContext("2d");
    var img = cctx.createImageData(cols, n);
    for (var y = 0; y < n; y++) {
      for (var x = 0; x < cols; x++) {
        var v = rows[y][x], o = (y * cols + x) * 4;
        var c = v === null ? [235, 235, 235] : colour(hi > lo ? (v - lo) / (hi - lo) : 0.5);
        img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
      }
    }
    cctx.putImageData(img, 0, 0);
    var canvas = h("canvas", {cls: "heat", width: width, height: n * rowH});
    var ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(cells, 0, 0, width, n * rowH);
    var labels = h("div", {cls: "labels", style: "width:" + labelW + "px"});
    var marks = h("div", {cls: "marks"});
    r.ranks.forEach(function (rank, y) {
      var flag = flagged[rank] ? " ◀ " + flagged[rank].direction + " outlier" : "";
      var stall = stalled[rank] ? " ◀ stalled" : "";
      if (labelW) {
        labels.appendChild(h("div", {cls: (flag || stall) ? "label flagged" : "label", style: "height:" + rowH + "px;line-height:" + rowH + "px", text: r.labels[y] + flag + stall}));
      } else if (flag || stall) {
        marks.appendChild(h("div", {cls: "mark flagged", style: "top:" + (y * rowH) + "px", text: "rank " + rank + flag + stall}));
      }
    });
    var tip = h("div", {cls: "tip", hidden: ""});
    canvas.addEventListener("mousemove", function (e) {
      var box = canvas.getBoundingClientRect();
      var y = Math.floor((e.clientY - box.top) / rowH), x = Math.floor((e.clientX - box.left) / width * cols);
      if (y < 0 || y >= n || x < 0 || x >= cols) { tip.hidden = true; return; }
      tip.hidden = false;
      tip.textContent = r.labels[y] + " · " + when(r.t0 + (x + 0.5) * r.column_seconds) + " · " + map.name + " = " + num(rows[y][x]) + " " + map.unit;
      tip.style.left = (e.clientX - box.left + labelW + 12) + "px";
      tip.style.top = (e.clientY - box.top + 12) + "px";
    });
    canvas.addEventListener("mouseleave", function () { tip.hidden = true; });
    var scale = h("p", {cls: "note", text: map.name + " (" + map.unit + "): " + short(lo) + " (dark) to " + short(hi) + " (bright); grey: no pulse line in that column. " +
      (map.outliers.length ? "Outliers against the job's median (" + short(map.outliers[0].job_median) + "): " + map.outliers.map(function (o) { return "rank " + o.rank + " " + o.direction + " (median " + short(o.value) + ")"; }).join(", ") + "." : "No outlier rank.")});
    var wrap = h("div", {cls: "heatwrap"}, labels, h("div", {cls: "heatcell"}, canvas, marks, tip));
    target.appendChild(h("h3", {text: map.name + " by rank over time"}));
    target.appendChild(wrap);
    target.appendChild(scale);
    var rect = canvas.getBoundingClientRect();
    check.heatmaps.push({name: map.name, rows: rows.length, ranks: r.ranks.length, drawn_rows: canvas.height / rowH,
                         flagged: map.outliers.map(function (o) { return o.rank; }),
                         stalled_marked: Object.keys(stalled).map(Number), painted: nonBlank(canvas),
                         rect: [rect.left + window.scrollX, rect.top + window.scrollY, rect.width, rect.height]});
  }
  function ranksSection() {
    var r = data.ranks;
    var s = section("ranks", "Ranks over time (the pulse)", r ? r.ranks.length + " rank(s), " + r.columns + " column(s) of " +
      short(r.column_seconds) + " s; a rank is flagged when its median is far from the job's median (3 scaled MADs and 10%)." :
      "No pulse lines: PRIMUS_LENS_PULSE was off, or the injector that wrote these records had no pulse.");
    if (!r) { return; }
    var stalled = {};
    data.stalls.forEach(function (ev) { ev.ranks.forEach(function (x) { stalled[x.rank] = true; }); });
    if (r.step_rate && r.step_rate.x.length) {
      var holder = h("div", {cls: "chart wide"});
      s.appendChild(holder);
      var u = lineChart(holder, "step rate (steps/s): job median and slowest rank", ["median", "slowest"],
                        [r.step_rate.x, r.step_rate.median, r.step_rate.slowest], "time", true);
      selfCheckChart(u, "step_rate", ["median", "slowest"], holder);
    }
    r.heatmaps.forEach(function (map) { heatmap(s, r, map, stalled); });
  }

  // -- stalls ---------------------------------------------------------------------------------
  function stallsSection() {
    var s = section("stalls", "Stalls", data.stalls.length ? "Ranks that stopped stepping for longer than their threshold, with every thread's stack. " +
      "The odd one out is the rank whose innermost frames differ from what most ranks show: in a synchronous job the others are usually waiting for it." :
      "No stall in the pulse.");
    data.stalls.forEach(function (ev, i) {
      var odd = {};
      ev.odd.forEach(function (rank) { odd[rank] = true; });
      var box = h("div", {cls: "stall", "data-stall": i});
      box.appendChild(h("h3", {text: "Stall " + (i + 1) + " at " + when(ev.start) + ": rank(s) " + ev.ranks.map(function (x) { return x.rank; }).join(", ") +
        (ev.odd.length ? " — odd one out: rank " + ev.odd.join(", ") : "")}));
      var cols = h("div", {cls: "stacks"});
      ev.ranks.forEach(function (x) {
        var head = "rank " + x.rank + " (node " + x.node + ", local " + x.local_rank + ", pid " + x.pid + ")";
        var facts = "last step " + when(x.since) + ", threshold " + num(x.threshold) + " s, " +
          (x.recovered_after !== null ? "recovered after " + short(x.recovered_after) + " s" : "not recovered in the pulse");
        var col = h("div", {cls: odd[x.rank] ? "stackcol odd" : "stackcol", "data-rank": x.rank},
          h("h4", {text: head + (odd[x.rank] ? " — odd one out" : "")}), h("p", {cls: "note", text: facts}),
          h("pre", {text: x.stacks + (x.truncated ? "\n… (cut)" : "")}),
          x.own_threads ? h("details", {cls: "own-threads"}, h("summary", {text: x.own_threads + " primus-lens thread(s) (the injector's own: the pulse that took these stacks, the senders)"}),
            h("pre", {text: x.own_stacks})) : null);
        cols.appendChild(col);
      });
      box.appendChild(cols);
      s.appendChild(box);
      check.stalls.push({ranks: ev.ranks.map(function (x) { return x.rank; }), odd: ev.odd,
                         own_hidden: Array.prototype.map.call(box.querySelectorAll("details.own-threads"), function (d) { return !d.open; }),
                         odd_marked: Array.prototype.map.call(box.querySelectorAll(".stackcol.odd"), function (c) { return Number(c.getAttribute("data-rank")); })});
    });
  }

  // -- gaps -----------------------------------------------------------------------------------
  function gapsSection() {
    var s = section("gaps", "Gaps", "Steps a run skipped (at the stride its steps keep), rows whose step is approximate (" +
      "_primus_step_approx: wandb may have given them another step), and rows dropped (from the status files).");
    s.appendChild(table(["run", "stride", "steps missing", "missing ranges", "approximate rows", "approximate steps"],
      data.gaps.map(function (g) {
        return [g.run, g.stride, g.missing, g.ranges.map(function (r) { return r[0] === r[1] ? String(r[0]) : r[0] + "–" + r[1]; }).join(", ") || "none",
                g.approx, g.approx_steps.join(", ") || "none"];
      })));
    var dropped = data.job.delivery.filter(function (d) { return Object.keys(d.dropped).length; });
    s.appendChild(h("p", {cls: dropped.length ? "warn" : "note", text: dropped.length ? "Rows dropped: " + dropped.map(function (d) {
      return d.where + " " + d.sink + ": " + Object.keys(d.dropped).map(function (k) { return k + " " + d.dropped[k]; }).join(", ");
    }).join("; ") : "No row dropped by any sink."}));
  }

  function run(name, part) {
    try { part(); } catch (e) { check.errors.push(name + ": " + (e && e.stack ? e.stack : String(e))); }
  }
  app.textContent = "";
  app.appendChild(h("h1", {text: "primus-lens report"}));
  app.appendChild(h("p", {cls: "note", text: "Records under " + data.roots.join(", ") + ", read " + when(data.generated) + "."}));
  var nav = h("nav", null);
  [["job", "job"], ["stalls", "stalls (" + data.stalls.length + ")"], ["ranks", "ranks"], ["metrics", "keys"], ["gaps", "gaps"]].forEach(function (x) {
    nav.appendChild(h("a", {href: "#" + x[0], text: x[1]}));
  });
  app.appendChild(nav);
  run("job", jobSection);
  run("stalls", stallsSection);
  run("ranks", ranksSection);
  run("metrics", metricsSection);
  run("gaps", gapsSection);
  queueMicrotask(function () {  // after uPlot's own microtasks, which draw: all is drawn now
    check.render_ms = Math.round(performance.now() - started);
    check.since_navigation_ms = Math.round(performance.now());  // parsing the page included
    run("self-check", function () { later.forEach(function (f) { f(); }); });
    check.height = document.documentElement.scrollHeight;
    document.body.appendChild(h("pre", {id: "lens-selfcheck", hidden: "", text: JSON.stringify(check)}));
  });
})();
