/* cotviz explore: the page's script (no dependencies, no network).
 *
 * Reads the JSON in #cvx-data (written by cotviz.explore.page), decodes the base64 float32/float16 arrays
 * and draws: the image the model saw with the selected map (cell (i, j) of stride s covers model-input pixels
 * [j*s, (j+1)*s) x [i*s, (i+1)*s)), the kernels of every head at the hovered cell, every map's value there
 * and the local rollout of that cell. The rollout is the one thing composed here; it implements
 * cotviz.analysis.rollout.local_rollout (normalization "abs") step by step, see rolloutFrom().
 */
(function () {
  "use strict";
  var root = document.getElementById("cvx");
  var D = JSON.parse(document.getElementById("cvx-data").textContent);
  var S = D.image.size[0];
  var $ = function (sel) { return root.querySelector(sel); };

  // ---------------------------------------------------------------------------------------- arrays
  function bytesOf(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function half(h) {  // IEEE 754 binary16 -> number
    var sign = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return sign * f * Math.pow(2, -24);
    if (e === 31) return f ? NaN : sign * Infinity;
    return sign * (1 + f / 1024) * Math.pow(2, e - 15);
  }
  var cache = {};
  function arr(key) {  // little-endian float32 / float16 -> Float64Array (exact: float32 and float16 fit a double)
    if (cache[key]) return cache[key];
    var a = D.arrays[key];
    if (!a) throw new Error("cotviz explore: no array " + key);
    var u = bytesOf(a.data), view = new DataView(u.buffer), n, out, i;
    if (a.dtype === "float32") {
      n = u.length / 4; out = new Float64Array(n);
      for (i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
    } else {
      n = u.length / 2; out = new Float64Array(n);
      for (i = 0; i < n; i++) out[i] = half(view.getUint16(2 * i, true));
    }
    cache[key] = out;
    return out;
  }
  var luts = {};
  Object.keys(D.cmaps).forEach(function (k) { luts[k] = bytesOf(D.cmaps[k]); });
  function colour(lut, t) {  // t in [0, 1] -> "rgb(...)" (matplotlib: index int(t * 256), clipped)
    var i = Math.min(255, Math.max(0, Math.floor(t * 256)));
    return "rgb(" + lut[3 * i] + "," + lut[3 * i + 1] + "," + lut[3 * i + 2] + ")";
  }
  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (isNaN(v)) return "NaN";
    if (!isFinite(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v === 0) return "0";
    var a = Math.abs(v);
    return (a >= 1e4 || a < 1e-3) ? v.toExponential(3) : v.toPrecision(4);
  }

  // ---------------------------------------------------------------------------------------- state
  var blocks = D.blocks, byName = {};
  blocks.forEach(function (b, i) { b.index = i; byName[b.name] = b; });
  var shown = blocks.filter(function (b) { return b.shown; });
  var mapsByName = {};
  D.maps.forEach(function (m) { mapsByName[m.name] = m; });
  var init = D.initial || {};
  var first = byName[init.block] && byName[init.block].shown ? byName[init.block] : shown[shown.length - 1];
  var state = {
    block: first.name,
    map: mapsByName[init.map] ? init.map : D.maps[0].name,
    head: (init.head === null || init.head === undefined) ? (D.has_mean ? -1 : 0) : init.head,
    scale: "shared",
    opacity: 0.65,
    u: 0, v: 0,  // the cursor, in model-input pixels (the centre of the current cell)
    pinned: false
  };
  (function () {
    var cell = init.cell || [Math.floor(first.grid[0] / 2), Math.floor(first.grid[1] / 2)];
    state.u = (cell[1] + 0.5) * first.stride; state.v = (cell[0] + 0.5) * first.stride;
  })();

  function cellAt(b, u, v) {  // cotviz.analysis.rollout.cell_at
    var r = Math.min(Math.max(Math.floor(v / b.stride), 0), b.grid[0] - 1);
    var c = Math.min(Math.max(Math.floor(u / b.stride), 0), b.grid[1] - 1);
    return [r, c];
  }
  function current() { return byName[state.block]; }
  function currentCell() { var b = current(); return cellAt(b, state.u, state.v); }
  function mapKey(block, map, head) { return head < 0 ? block + "/" + map : block + "/" + map + "/heads"; }
  function mapValues(block, map, head) {  // (H*W) view of the map of one head (or the mean) of a block
    var b = byName[block], n = b.grid[0] * b.grid[1], a = arr(mapKey(block, map, head));
    return head < 0 ? a : a.subarray(head * n, (head + 1) * n);
  }
  function limits(map, head) {  // like cotviz.viz.figures.shared_norm: finite min..max, padded when constant
    var pool = state.scale === "shared" ? shown : [current()], lo = Infinity, hi = -Infinity;
    pool.forEach(function (b) {
      var a = mapValues(b.name, map, head);
      for (var i = 0; i < a.length; i++) { if (isFinite(a[i])) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i]; } }
    });
    if (lo === Infinity) { lo = 0; hi = 0; }
    if (hi <= lo) { var pad = Math.abs(lo) * 1e-3 || 1e-3; lo -= pad; hi += pad; }
    return [lo, hi];
  }

  // ---------------------------------------------------------------------------------------- rollout
  // cotviz.analysis.rollout.local_rollout with normalization "abs": start from the one-hot cell on block b's
  // grid and walk the steps of blocks 1..b backwards, each replaced by its transpose.
  function windowWeights(b) {  // (K*K, H, W) head-averaged |A| / sum_j |A|  (window_weights, "abs")
    var key = b.name + "/weights";
    if (cache[key]) return cache[key];
    var A = arr(b.name + "/attention"), M = b.heads, KK = b.kernel * b.kernel, HW = b.grid[0] * b.grid[1];
    var W = new Float64Array(KK * HW), m, j, p, tot;
    for (m = 0; m < M; m++) {
      for (p = 0; p < HW; p++) {
        tot = 0;
        for (j = 0; j < KK; j++) tot += Math.abs(A[(m * KK + j) * HW + p]);
        if (tot > 0) for (j = 0; j < KK; j++) W[j * HW + p] += Math.abs(A[(m * KK + j) * HW + p]) / tot;
      }
    }
    for (j = 0; j < W.length; j++) W[j] /= M;
    cache[key] = W;
    return W;
  }
  function kernelT(mass, b) {  // F.fold of the weighted windows: cell p sends W[j, p] of its mass to p + offset(j)
    var K = b.kernel, H = b.grid[0], Wd = b.grid[1], HW = H * Wd, half_ = Math.floor(K / 2);
    var W = windowWeights(b), out = new Float64Array(HW);
    for (var r = 0; r < H; r++) for (var c = 0; c < Wd; c++) {
      var mp = mass[r * Wd + c];
      if (mp === 0) continue;
      for (var kh = 0; kh < K; kh++) for (var kw = 0; kw < K; kw++) {
        var y = r + kh - half_, x = c + kw - half_;
        if (y < 0 || y >= H || x < 0 || x >= Wd) continue;  // zero padding: dropped
        out[y * Wd + x] += mp * W[(kh * K + kw) * HW + r * Wd + c];
      }
    }
    return out;
  }
  function avgpoolT(mass, inS, outS) {  // AvgPool2d(3, 2, padding=1, count_include_pad=True) transposed
    var out = new Float64Array(inS[0] * inS[1]);
    for (var i = 0; i < outS[0]; i++) for (var j = 0; j < outS[1]; j++) {
      var v = mass[i * outS[1] + j] / 9;
      for (var di = -1; di <= 1; di++) for (var dj = -1; dj <= 1; dj++) {
        var y = 2 * i + di, x = 2 * j + dj;
        if (y >= 0 && y < inS[0] && x >= 0 && x < inS[1]) out[y * inS[1] + x] += v;
      }
    }
    return out;
  }
  function reflect(p, n) { return p < 0 ? -p : (p >= n ? 2 * (n - 1) - p : p); }
  function blurT(mass, inS, outS) {  // reflect-pad 1 + [1,2,1]^T[1,2,1]/16, stride 2 (BlurPool2d) transposed
    var f = [0.25, 0.5, 0.25], out = new Float64Array(inS[0] * inS[1]);
    for (var i = 0; i < outS[0]; i++) for (var j = 0; j < outS[1]; j++) {
      var v = mass[i * outS[1] + j];
      for (var a = 0; a < 3; a++) for (var c = 0; c < 3; c++) {
        var y = reflect(2 * i + a - 1, inS[0]), x = reflect(2 * j + c - 1, inS[1]);
        out[y * inS[1] + x] += v * f[a] * f[c];
      }
    }
    return out;
  }
  function rolloutFrom(blockName, cell) {
    var steps = D.rollout.steps, last = -1, i;
    for (i = 0; i < steps.length; i++) if (steps[i].kind === "kernel" && steps[i].block === blockName) last = i;
    if (last < 0) return null;
    var b = byName[blockName], mass = new Float64Array(b.grid[0] * b.grid[1]);
    mass[cell[0] * b.grid[1] + cell[1]] = 1;
    for (i = last; i >= 0; i--) {
      var s = steps[i];
      if (s.kind === "kernel") mass = kernelT(mass, byName[s.block]);
      else if (s.kind === "avgpool") mass = avgpoolT(mass, s["in"], s.out);
      else if (s.kind === "blur") mass = blurT(mass, s["in"], s.out);
      else throw new Error("cotviz explore: unknown rollout step " + s.kind);
    }
    return mass;
  }

  // ---------------------------------------------------------------------------------------- drawing
  var view = $(".cvx-view"), vctx = view.getContext("2d");
  var zoom = Math.max(1, Math.floor(448 / S));
  view.width = view.height = S * zoom;
  $(".cvx-colorbar").style.width = $(".cvx-cellinfo").style.maxWidth = (S * zoom) + "px";
  var rcan = $(".cvx-rollout"), rzoom = Math.max(1, Math.floor(300 / S));
  rcan.width = rcan.height = S * rzoom;
  var img = new Image();

  function drawView() {
    var b = current(), cell = currentCell(), s = b.stride * zoom;
    vctx.imageSmoothingEnabled = false;
    vctx.globalAlpha = 1;
    vctx.drawImage(img, 0, 0, S * zoom, S * zoom);
    var vals = mapValues(b.name, state.map, state.head), lim = limits(state.map, state.head);
    var lut = luts[mapsByName[state.map].cmap];
    vctx.globalAlpha = state.opacity;
    for (var r = 0; r < b.grid[0]; r++) for (var c = 0; c < b.grid[1]; c++) {
      var v = vals[r * b.grid[1] + c];
      if (!isFinite(v)) continue;  // NaN/Inf: left blank, as in the figures
      vctx.fillStyle = colour(lut, (v - lim[0]) / (lim[1] - lim[0]));
      vctx.fillRect(c * s, r * s, s, s);
    }
    vctx.globalAlpha = 1;
    vctx.lineWidth = 1;  // the cell's outline, exactly on its pixels: black on the edge, white inside
    vctx.strokeStyle = "#000";
    vctx.strokeRect(cell[1] * s + 0.5, cell[0] * s + 0.5, s - 1, s - 1);
    vctx.strokeStyle = "#fff";
    vctx.strokeRect(cell[1] * s + 1.5, cell[0] * s + 1.5, s - 3, s - 3);
    drawColorbar(lim, lut);
  }
  function drawBar(canvas, lut, width) {
    canvas.width = width; canvas.height = 1;
    canvas.style.width = width + "px";
    var ctx = canvas.getContext("2d");
    for (var x = 0; x < width; x++) { ctx.fillStyle = colour(lut, (x + 0.5) / width); ctx.fillRect(x, 0, 1, 1); }
  }
  function drawColorbar(lim, lut) {
    drawBar($(".cvx-cb"), lut, S * zoom);
    var mid = (lim[0] + lim[1]) / 2;
    $(".cvx-cb-ticks").innerHTML = "";
    [lim[0], mid, lim[1]].forEach(function (v) {
      var span = document.createElement("span"); span.textContent = fmt(v); span.dataset.value = String(v);
      $(".cvx-cb-ticks").appendChild(span);
    });
    var m = mapsByName[state.map];
    $(".cvx-cb-units").textContent = m.label + (state.head < 0 ? " (mean over heads)" : " (head " + state.head + ")") +
      ", " + m.units + "; scale " + (state.scale === "shared" ? "shared by the blocks" : "of " + state.block);
    $(".cvx-cb-units").dataset.units = m.units;
  }

  function buildKernels() {
    var b = current(), box = $(".cvx-kernels");
    box.innerHTML = "";
    for (var m = 0; m < b.heads; m++) {
      var k = document.createElement("div");
      k.className = "cvx-kernel"; k.dataset.head = String(m);
      var label = document.createElement("div"); label.textContent = "head " + m;
      var grid = document.createElement("div");
      grid.className = "cvx-kgrid"; grid.style.gridTemplateColumns = "repeat(" + b.kernel + ", 30px)";
      for (var kh = 0; kh < b.kernel; kh++) for (var kw = 0; kw < b.kernel; kw++) {
        var cell = document.createElement("div");
        cell.className = "cvx-kcell"; cell.dataset.head = String(m); cell.dataset.kh = String(kh); cell.dataset.kw = String(kw);
        grid.appendChild(cell);
      }
      k.appendChild(label); k.appendChild(grid); box.appendChild(k);
      k.addEventListener("click", (function (h) { return function () { setHead(h); }; })(m));
    }
    drawBar($(".cvx-kcb"), luts[D.kernel_cmap], 240);
  }
  function drawKernels() {
    var b = current(), cell = currentCell(), A = arr(b.name + "/attention");
    var K = b.kernel, HW = b.grid[0] * b.grid[1], p = cell[0] * b.grid[1] + cell[1], lut = luts[D.kernel_cmap];
    var vmax = 0, m, j;
    for (m = 0; m < b.heads; m++) for (j = 0; j < K * K; j++) {
      var a = Math.abs(A[(m * K * K + j) * HW + p]); if (isFinite(a) && a > vmax) vmax = a;
    }
    vmax = vmax || 1;
    root.querySelectorAll(".cvx-kcell").forEach(function (el) {
      var h = +el.dataset.head, kh = +el.dataset.kh, kw = +el.dataset.kw;
      var v = A[((h * K + kh) * K + kw) * HW + p];
      el.dataset.value = String(v);
      el.textContent = isFinite(v) ? v.toFixed(2) : fmt(v);
      el.title = "head " + h + ", window (" + kh + ", " + kw + "): A = " + String(v);
      el.style.background = isFinite(v) ? colour(lut, (v + vmax) / (2 * vmax)) : "#ccc";
      el.style.color = Math.abs(v) > 0.6 * vmax ? "#fff" : "#222";
    });
    root.querySelectorAll(".cvx-kernel").forEach(function (el) {
      el.classList.toggle("cvx-selected", +el.dataset.head === state.head);
    });
    $(".cvx-kcb-ticks").innerHTML = "<span>" + fmt(-vmax) + "</span><span>0</span><span>" + fmt(vmax) + "</span>";
  }

  function drawValues() {
    var b = current(), cell = currentCell(), p = cell[0] * b.grid[1] + cell[1], n = b.grid[0] * b.grid[1];
    var head = state.head, thead = $(".cvx-values thead"), tbody = $(".cvx-values tbody");
    thead.innerHTML = "<tr><th>map</th>" + (D.has_mean ? "<th>mean over heads</th>" : "") +
      (head >= 0 ? "<th>head " + head + "</th>" : "") + "<th>units</th></tr>";
    tbody.innerHTML = "";
    D.maps.forEach(function (m) {
      var tr = document.createElement("tr");
      tr.dataset.map = m.name;
      if (m.name === state.map) tr.className = "cvx-current";
      var td = document.createElement("td"); td.textContent = m.label; tr.appendChild(td);
      function num(key, value, kind) {
        var cellTd = document.createElement("td"), f16 = D.arrays[key].dtype === "float16";
        cellTd.className = "cvx-num"; cellTd.dataset.kind = kind; cellTd.dataset.value = String(value);
        cellTd.dataset.dtype = D.arrays[key].dtype;
        cellTd.textContent = (f16 ? "\u2248 " : "") + fmt(value);
        cellTd.title = String(value) + (f16 ? " (stored float16)" : " (float32, as in the .npz)");
        tr.appendChild(cellTd);
      }
      if (D.has_mean) num(b.name + "/" + m.name, arr(b.name + "/" + m.name)[p], "mean");
      if (head >= 0) num(b.name + "/" + m.name + "/heads", arr(b.name + "/" + m.name + "/heads")[head * n + p], "head");
      var u = document.createElement("td"); u.textContent = m.units; tr.appendChild(u);
      tbody.appendChild(tr);
    });
  }

  var lastRollout = null;
  function drawRollout() {
    var b = current(), cell = currentCell(), mass = rolloutFrom(b.name, cell), g = D.rollout.stage_input_grid;
    var s0 = D.rollout.stage_input_stride, ctx = rcan.getContext("2d"), z = rzoom;
    lastRollout = { block: b.name, cell: cell, values: mass ? Array.from(mass) : null, grid: g, stride: s0 };
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 1;
    ctx.drawImage(img, 0, 0, S * z, S * z);
    if (!mass) { $(".cvx-rollout-info").textContent = "no rollout: blocks 1.." + b.name + " were not recorded"; return; }
    var total = 0, vmax = 0, i;
    for (i = 0; i < mass.length; i++) { total += mass[i]; if (mass[i] > vmax) vmax = mass[i]; }
    var lut = luts[D.rollout_cmap];
    ctx.globalAlpha = 0.8;
    for (var r = 0; r < g[0]; r++) for (var c = 0; c < g[1]; c++) {
      var v = mass[r * g[1] + c];
      ctx.fillStyle = colour(lut, vmax > 0 ? v / vmax : 0);
      ctx.fillRect(c * s0 * z, r * s0 * z, s0 * z, s0 * z);
    }
    ctx.globalAlpha = 1;
    var s = b.stride * z;
    ctx.strokeStyle = "#0f0"; ctx.lineWidth = 1;
    ctx.strokeRect(cell[1] * s + 0.5, cell[0] * s + 0.5, s - 1, s - 1);
    $(".cvx-rollout-info").textContent = "from " + b.name + " cell (" + cell[0] + ", " + cell[1] + ") to the " +
      g[0] + "\u00d7" + g[1] + " stage input (stride " + s0 + " px); mass kept " + fmt(total) +
      " (the rest fell on zero padding); colour: mass / max, max = " + fmt(vmax) + " (" +
      fmt(total > 0 ? vmax / total : 0) + " of the normalised mass)";
  }

  function drawCellInfo() {
    var b = current(), cell = currentCell(), s = b.stride;
    var x0 = cell[1] * s, y0 = cell[0] * s, x1 = Math.min(S, x0 + s), y1 = Math.min(S, y0 + s);
    var text = b.name + " cell (row " + cell[0] + ", col " + cell[1] + ") of " + b.grid[0] + "\u00d7" + b.grid[1] +
      ", stride " + s + ": model-input pixels x " + x0 + ".." + x1 + ", y " + y0 + ".." + y1 + (state.pinned ? " (pinned)" : "");
    if (D.crop_box) {
      var bx = D.crop_box, sx = (bx[2] - bx[0]) / S, sy = (bx[3] - bx[1]) / S;
      text += "\noriginal image pixels x " + (bx[0] + x0 * sx).toFixed(1) + ".." + (bx[0] + x1 * sx).toFixed(1) +
        ", y " + (bx[1] + y0 * sy).toFixed(1) + ".." + (bx[1] + y1 * sy).toFixed(1);
    }
    var info = $(".cvx-cellinfo");
    info.textContent = text; info.dataset.block = b.name; info.dataset.row = String(cell[0]); info.dataset.col = String(cell[1]);
  }

  function redrawCell() { drawView(); drawKernels(); drawValues(); drawRollout(); drawCellInfo(); }

  // ---------------------------------------------------------------------------------------- controls
  function option(sel, value, text) { var o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); }
  var mapSel = $(".cvx-map"), blockSel = $(".cvx-block"), headSel = $(".cvx-head");
  D.maps.forEach(function (m) { option(mapSel, m.name, m.label); });
  shown.forEach(function (b) { option(blockSel, b.name, b.name); });
  function fillHeads() {
    headSel.innerHTML = "";
    if (D.has_mean) option(headSel, "-1", "mean over heads");
    for (var h = 0; h < current().heads; h++) option(headSel, String(h), "head " + h);
    if (state.head >= current().heads) state.head = D.has_mean ? -1 : 0;
    headSel.value = String(state.head);
  }
  function setMap(name) { state.map = name; mapSel.value = name; drawView(); drawValues(); }
  function setBlock(name) { state.block = name; blockSel.value = name; fillHeads(); buildKernels(); redrawCell(); }
  function setHead(h) { state.head = h; headSel.value = String(h); drawView(); drawKernels(); drawValues(); }
  function setScale(s) {
    state.scale = s;
    root.querySelectorAll("input[name=cvx-scale]").forEach(function (el) { el.checked = el.value === s; });
    drawView();
  }
  function setCell(r, c) {
    var b = current();
    r = Math.min(Math.max(r, 0), b.grid[0] - 1); c = Math.min(Math.max(c, 0), b.grid[1] - 1);
    state.u = (c + 0.5) * b.stride; state.v = (r + 0.5) * b.stride;
    redrawCell();
  }
  mapSel.addEventListener("change", function () { setMap(mapSel.value); });
  blockSel.addEventListener("change", function () { setBlock(blockSel.value); });
  headSel.addEventListener("change", function () { setHead(+headSel.value); });
  root.querySelectorAll("input[name=cvx-scale]").forEach(function (el) {
    el.addEventListener("change", function () { if (el.checked) setScale(el.value); });
  });
  $(".cvx-opacity").addEventListener("input", function () { state.opacity = +$(".cvx-opacity").value / 100; drawView(); });
  function pointer(e) {  // client coordinates -> model-input pixels
    var rect = view.getBoundingClientRect();
    return [(e.clientX - rect.left) / rect.width * S, (e.clientY - rect.top) / rect.height * S];
  }
  view.addEventListener("mousemove", function (e) {
    if (state.pinned) return;
    var p = pointer(e), b = current(), before = currentCell(), after = cellAt(b, p[0], p[1]);
    if (before[0] === after[0] && before[1] === after[1]) return;
    setCell(after[0], after[1]);
  });
  view.addEventListener("click", function (e) {
    var p = pointer(e), cell = cellAt(current(), p[0], p[1]);
    state.pinned = !state.pinned;
    setCell(cell[0], cell[1]);
  });
  view.addEventListener("keydown", function (e) {
    var d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
    if (!d) return;
    e.preventDefault();
    var cell = currentCell();
    state.pinned = true;
    setCell(cell[0] + d[0], cell[1] + d[1]);
  });

  // ---------------------------------------------------------------------------------------- header, footer
  $(".cvx-title").textContent = D.title;
  D.notes.forEach(function (n) { var li = document.createElement("li"); li.textContent = n; $(".cvx-notes").appendChild(li); });
  Object.keys(D.details).forEach(function (k) {
    var tr = document.createElement("tr"), a = document.createElement("td"), b = document.createElement("td");
    a.textContent = k; b.textContent = D.details[k]; tr.appendChild(a); tr.appendChild(b); $(".cvx-details").appendChild(tr);
  });
  (function () {
    var f32 = [], f16 = [];
    Object.keys(D.arrays).forEach(function (k) { (D.arrays[k].dtype === "float16" ? f16 : f32).push(k); });
    $(".cvx-dtypes-summary").textContent = "Embedded arrays: " + f32.length + " float32, " + f16.length + " float16";
    $(".cvx-dtypes").textContent = "Embedded arrays: " + f32.length + " float32 (every cell's kernels, the maps as the " +
      ".npz holds them, and any per-head map whose colour scale float16 would coarsen: " + f32.join(", ") + "); " +
      f16.length + " float16 (per-head maps whose float16 rounding is below 1/1000 of each head's range; their " +
      "numbers are marked \u2248): " + (f16.join(", ") || "none") + ".";
  })();
  D.maps.forEach(function (m) {
    var dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = m.label + " [" + m.units + "]"; dd.textContent = m.formula;
    Object.keys(m.formula_by_attention || {}).forEach(function (kind) {
      dd.textContent += " | where the attention tap holds a " + kind + ": " + m.formula_by_attention[kind];
    });
    $(".cvx-formulas").appendChild(dt); $(".cvx-formulas").appendChild(dd);
  });

  // ---------------------------------------------------------------------------------------- API (tests)
  var api = {
    state: state, setMap: setMap, setBlock: setBlock, setHead: setHead, setScale: setScale, setCell: setCell,
    cell: currentCell, limits: function () { return limits(state.map, state.head); },
    rollout: function () { return lastRollout; }, rolloutFrom: function (block, r, c) {
      var m = rolloutFrom(block, [r, c]); return m ? Array.from(m) : null;
    },
    geometry: function () {  // where the model input lies on screen (CSS pixels)
      var rect = view.getBoundingClientRect();
      return { left: rect.left, top: rect.top, width: rect.width, height: rect.height, size: S };
    },
    ready: false
  };
  window.cotvizExplorer = api;
  img.onload = function () {
    mapSel.value = state.map; blockSel.value = state.block; fillHeads(); buildKernels(); redrawCell();
    api.ready = true; root.dataset.ready = "1";
  };
  img.src = "data:image/png;base64," + D.image.png;
})();
