// The live page of a maker run: GET /runs/ID/report once (the run so far, folded by the server
// from its log), then the run's server-sent events from that report's last seq on, folded here
// into the same figures; when the run ends, the final report, drawn from the server's data.
// No library, no build step, nothing fetched from elsewhere: the page works offline.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const TIME_BINS = 240; // as the report's series over time (replay/_report.py)
  const STEP_BINS = 256;
  const PLOT_BINS = 64;
  const PREDICTED_ROUNDS = 1000;
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
  const PREDICTED = "#ff7f0e";

  const runId = decodeURIComponent(location.pathname.split("/").slice(-2)[0]);
  const base = location.pathname.replace(/\/live\/?$/, "");

  // The token travels in the address's fragment (#token=...), which the browser never sends:
  // it is kept for this tab only, and taken out of the address bar.
  let token = sessionStorage.getItem("maker-token");
  const fromHash = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (fromHash) {
    token = decodeURIComponent(fromHash[1]);
    sessionStorage.setItem("maker-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const headers = () => (token ? { Authorization: "Bearer " + token } : {});

  // -- the live fold ---------------------------------------------------------------------------

  class Bins {
    // Counts by bins of one width, the width doubling when a value lands past `limit` bins.
    constructor(width, limit, series) {
      this.width = width;
      this.limit = limit;
      this.series = {};
      for (const [name, values] of Object.entries(series || {})) this.series[name] = values.slice();
      this.top = Math.max(-1, ...Object.values(this.series).map((v) => v.length - 1));
    }
    index(x) {
      if (!(x > 0)) return 0;
      let i;
      while ((i = Math.floor(x / this.width)) >= this.limit) {
        this.width *= 2;
        for (const name of Object.keys(this.series)) {
          const merged = [];
          this.series[name].forEach((v, j) => {
            merged[j >> 1] = (merged[j >> 1] || 0) + v;
          });
          this.series[name] = merged;
        }
        this.top = this.top >> 1;
      }
      return i;
    }
    add(x, name, amount) {
      const i = this.index(x);
      const row = this.series[name] || (this.series[name] = []);
      row[i] = (row[i] || 0) + (amount === undefined ? 1 : amount);
      this.top = Math.max(this.top, i);
    }
    reach(x) {
      const i = this.index(x); // first: it may widen the bins, and so lower `top`
      this.top = Math.max(this.top, i);
    }
    get(name) {
      const row = this.series[name] || [];
      const out = [];
      for (let i = 0; i <= this.top; i++) out.push(row[i] || 0);
      return out;
    }
    starts() {
      const out = [];
      for (let i = 0; i <= this.top; i++) out.push(i * this.width);
      return out;
    }
  }

  function coarsen(width, columns, bins) {
    let factor = 1;
    const n = Math.max(0, ...columns.map((c) => c.length));
    while (Math.ceil(n / factor) > bins) factor *= 2;
    const merged = columns.map((c) => {
      const out = [];
      c.forEach((v, i) => {
        out[Math.floor(i / factor)] = (out[Math.floor(i / factor)] || 0) + v;
      });
      return out;
    });
    return { width: width * factor, columns: merged };
  }

  const S = {
    status: "connecting",
    reason: "",
    lastSeq: -1,
    t0: null,
    lastT: 0,
    task: "",
    params: {},
    models: [],
    k: 0,
    kNow: 0,
    maxSteps: null,
    calibration: false,
    steps: 0,
    started: 0,
    decided: 0,
    decidedSamples: 0,
    samples: 0,
    received: 0,
    votes: 0,
    redFlags: {},
    failures: 0,
    failuresByKind: {},
    inTokens: 0,
    outTokens: 0,
    cost: 0,
    needed: {},
    agree: 0,
    disagree: 0,
    startedByK: {},
    byTime: new Bins(1 / 64, TIME_BINS),
    byStep: new Bins(1, STEP_BINS),
  };

  function fromReport(r) {
    // The run so far, as the server folded it from the log.
    const s = r.summary;
    S.t0 = r.started_at;
    S.lastSeq = r.last_seq;
    S.task = s.task;
    S.params = s.task_params;
    S.models = s.models;
    S.k = s.k;
    S.kNow = r.k_changes.length ? r.k_changes[r.k_changes.length - 1][1] : s.k;
    S.calibration = r.calibration !== null;
    S.status = s.status;
    S.reason = s.reason;
    S.steps = s.steps;
    S.started = r.steps_started;
    S.samples = s.samples;
    S.received = r.by_step.series.received.reduce((a, b) => a + b, 0);
    S.votes = s.votes;
    S.redFlags = Object.assign({}, s.red_flags_by_reason);
    S.failures = s.failures;
    S.failuresByKind = Object.assign({}, s.failures_by_kind);
    S.inTokens = s.input_tokens;
    S.outTokens = s.output_tokens;
    S.cost = s.cost_usd;
    S.needed = {};
    let before = r.steps_started;
    for (const [round, undecided] of r.convergence) {
      if (before - undecided) S.needed[round] = before - undecided;
      before = undecided;
    }
    S.decided = Object.values(S.needed).reduce((a, b) => a + b, 0);
    S.agree = r.agree;
    S.disagree = r.disagree;
    S.startedByK = {};
    for (const [k, n] of Object.entries(r.started_by_k)) S.startedByK[k] = n;
    S.byTime = new Bins(r.by_time.width, TIME_BINS, { decided: r.by_time.series.decided });
    const st = r.by_step.series;
    S.byStep = new Bins(r.by_step.width, STEP_BINS, {
      decided: st.decided,
      samples: st.samples,
      votes: st.votes,
    });
    S.decidedSamples = st.samples.reduce((a, b) => a + b, 0);
    S.lastT = s.wall_s;
  }

  function apply(e) {
    // One event, folded as replay/_report.py folds it.
    S.lastSeq = e.seq;
    if (S.t0 === null) S.t0 = e.ts;
    const t = e.ts - S.t0;
    S.lastT = Math.max(S.lastT, t);
    S.byTime.reach(t);
    switch (e.type) {
      case "run_started":
        S.t0 = e.ts;
        S.task = e.task;
        S.params = e.task_params;
        S.models = e.models;
        S.calibration = e.policy.mode === "calibration";
        S.k = S.kNow = S.calibration ? 0 : e.policy.k || 3;
        S.status = "running";
        break;
      case "step_started":
        // A step's first start counts it (a pipelined run may start a step again).
        if (!e.branch) {
          S.started += 1;
          if (!S.calibration) S.startedByK[S.kNow] = (S.startedByK[S.kNow] || 0) + 1;
        }
        break;
      case "sample_requested":
        S.samples += 1;
        break;
      case "sample_received":
        S.received += 1;
        S.inTokens += e.input_tokens;
        S.outTokens += e.output_tokens;
        S.cost += e.cost_usd || 0;
        break;
      case "sample_failed":
        S.failures += 1;
        S.failuresByKind[e.error_kind] = (S.failuresByKind[e.error_kind] || 0) + 1;
        break;
      case "red_flagged":
        S.redFlags[e.reason] = (S.redFlags[e.reason] || 0) + 1;
        break;
      case "vote_counted":
        S.votes += 1;
        break;
      case "step_decided": {
        const votes = Object.values(e.votes).reduce((a, b) => a + b, 0);
        const winner = e.votes[e.winner] || 0;
        S.needed[votes] = (S.needed[votes] || 0) + 1;
        S.decided += 1;
        S.decidedSamples += e.samples;
        S.agree += winner;
        S.disagree += votes - winner;
        S.byTime.add(t, "decided");
        S.byStep.add(e.step, "decided");
        S.byStep.add(e.step, "samples", e.samples);
        S.byStep.add(e.step, "votes", votes);
        break;
      }
      case "state_changed":
        S.steps = e.step + 1;
        break;
      case "k_changed":
        S.kNow = e.k;
        break;
      case "run_resumed":
        S.status = "running";
        S.reason = "";
        break;
      case "run_finished":
        S.status = e.status;
        S.reason = e.reason || "";
        break;
      default:
        break;
    }
  }

  // -- the formulas (maker/core/_formulas.py) ----------------------------------------------------

  function undecidedShare(p, k, rounds) {
    // The gambler's-ruin walk of the correct answer's lead, stopped at +k or -k.
    const q = 1 - p;
    let lead = new Array(2 * k - 1).fill(0);
    lead[k - 1] = 1;
    let stopped = 0;
    const out = [1];
    for (let r = 0; r < rounds; r++) {
      const moved = new Array(2 * k - 1).fill(0);
      lead.forEach((mass, i) => {
        if (!mass) return;
        if (i + 1 < moved.length) moved[i + 1] += mass * p;
        else stopped += mass * p;
        if (i >= 1) moved[i - 1] += mass * q;
        else stopped += mass * q;
      });
      lead = moved;
      out.push(Math.max(0, 1 - stopped));
    }
    return out;
  }

  function expectedVotes(p, k) {
    // Eq 16, exact for one rival.
    if (p === 1) return k;
    const r = (1 - p) / p;
    return (k * ((1 - r ** k) / (1 + r ** k))) / (2 * p - 1);
  }

  function prediction(undecided) {
    const total = S.agree + S.disagree;
    const ks = Object.entries(S.startedByK).filter(([k, n]) => n > 0 && Number(k) > 0);
    if (S.calibration || !total || !ks.length || !S.received) return null;
    const p = S.agree / total;
    if (!(p > 0.5)) return null;
    const v = S.votes / S.received;
    let rounds = Math.max(undecided.length - 1, ...ks.map(([k]) => Number(k)));
    const curve = () => {
      const shares = ks.map(([k, n]) => [n, undecidedShare(p, Number(k), rounds)]);
      const out = [];
      for (let r = 0; r <= rounds; r++) out.push(shares.reduce((a, [n, s]) => a + n * s[r], 0));
      return out;
    };
    let c = curve();
    while (c[c.length - 1] >= 0.5 && c.length <= PREDICTED_ROUNDS) {
      rounds *= 2;
      c = curve();
    }
    while (c.length > undecided.length && c[c.length - 2] < 0.5) c.pop();
    const n = ks.reduce((a, [, m]) => a + m, 0);
    const votes = ks.reduce((a, [k, m]) => a + m * expectedVotes(p, Number(k)), 0) / n;
    return { p, v, undecided: c.slice(0, PREDICTED_ROUNDS + 1), votes, samples: votes / v };
  }

  function liveConvergence() {
    const rounds = Math.max(0, ...Object.keys(S.needed).map(Number));
    const undecided = [S.started];
    for (let r = 1; r <= rounds; r++) undecided.push(undecided[r - 1] - (S.needed[r] || 0));
    const pred = prediction(undecided);
    const ks = [S.k, ...Object.keys(S.startedByK).map(Number)].filter(
      (k, i, all) => k > 0 && all.indexOf(k) === i,
    );
    return {
      rounds: undecided.map((_, r) => r),
      undecided,
      steps: S.started,
      ks,
      p: pred ? pred.p : null,
      predicted: pred ? pred.undecided : null,
      pred,
    };
  }

  // -- drawing: small SVG charts -----------------------------------------------------------------

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  const fmt = (v) => {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e6 || a < 1e-3) return v.toExponential(0);
    if (a >= 1000) return (v / 1000).toFixed(a >= 1e4 ? 0 : 1) + "k";
    return String(+v.toPrecision(3));
  };

  function chart(figure, spec) {
    // spec: {title, xlabel, ylabel, yscale: "linear"|"symlog", xscale: "linear"|"log",
    //        series: [{kind: "line"|"steps"|"bar"|"points", x, y, w, color, dash, label}],
    //        hlines: [{y, color, dash, label}], vlines: [{x, color, dash, label}], empty, percent}
    figure.textContent = "";
    const W = 640, H = 300, L = 58, R = 14, T = 28, B = 44;
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": spec.title }, figure);
    el("text", { x: W / 2, y: 17, "text-anchor": "middle", class: "title" }, svg, spec.title);
    el("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, svg, spec.xlabel || "");
    el("text", { transform: `translate(13 ${(T + H - B) / 2}) rotate(-90)`, "text-anchor": "middle" }, svg, spec.ylabel || "");
    if (spec.empty) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#777" }, svg, spec.empty);
      return;
    }
    const series = spec.series.filter((s) => s.x.length);
    const xs = [], ys = [0];
    for (const s of series) {
      s.x.forEach((x, i) => {
        if (s.y[i] === null || !Number.isFinite(s.y[i])) return;
        xs.push(x);
        if (s.kind === "bar" || s.kind === "steps") xs.push(x + (Array.isArray(s.w) ? s.w[i] : s.w || 0));
        ys.push(s.y[i] + (s.bottom ? s.bottom[i] : 0));
      });
    }
    for (const h of spec.hlines || []) ys.push(h.y);
    for (const v of spec.vlines || []) xs.push(v.x);
    const xlog = spec.xscale === "log";
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (xlog) { x0 = Math.log10(x0); x1 = Math.log10(x1); }
    if (!(x1 > x0)) { x0 -= 0.5; x1 += 0.5; }
    const symlog = spec.yscale === "symlog";
    const sy = (v) => (symlog ? (v <= 1 ? v : 1 + Math.log10(v)) : v);
    let y1 = Math.max(...ys.map(sy)) * 1.08;
    if (!(y1 > 0)) y1 = 1;
    const px = (x) => L + (((xlog ? Math.log10(x) : x) - x0) / (x1 - x0)) * (W - L - R);
    const py = (y) => H - B - (sy(Math.max(0, y)) / y1) * (H - T - B);
    // Axes and ticks.
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
    let yticks;
    if (symlog) {
      yticks = [0, 1];
      for (let v = 10; sy(v) <= y1; v *= 10) yticks.push(v);
    } else yticks = niceTicks(0, y1, 5);
    for (const v of yticks) {
      const y = py(v);
      el("line", { x1: L, y1: y, x2: W - R, y2: y, class: "grid" }, svg);
      el("text", { x: L - 5, y: y + 4, "text-anchor": "end" }, svg, spec.percent ? +(v * 100).toPrecision(3) + "%" : fmt(v));
    }
    const xticks = xlog
      ? niceTicks(Math.ceil(x0), Math.floor(x1), 6).filter(Number.isInteger).map((e) => 10 ** e)
      : niceTicks(x0, x1, 8);
    for (const v of spec.xticks || xticks) {
      const x = px(v);
      el("line", { x1: x, y1: H - B, x2: x, y2: H - B + 4, class: "axis" }, svg);
      el("text", { x, y: H - B + 16, "text-anchor": "middle" }, svg, spec.xtickLabels ? spec.xtickLabels[v] : fmt(v));
    }
    const legend = [];
    series.forEach((s, n) => {
      const color = s.color || COLORS[n % COLORS.length];
      const dash = s.dash || "";
      if (s.kind === "bar") {
        s.x.forEach((x, i) => {
          const w = Array.isArray(s.w) ? s.w[i] : s.w;
          const bottom = s.bottom ? s.bottom[i] : 0;
          if (!s.y[i]) return;
          const top = py(bottom + s.y[i]);
          el("rect", { x: px(x), y: top, width: Math.max(0.5, px(x + w) - px(x)), height: Math.max(0, py(bottom) - top), fill: color, opacity: s.opacity || 1 }, svg);
        });
      } else if (s.kind === "points") {
        s.x.forEach((x, i) => {
          if (s.y[i] === null) return;
          el("circle", { cx: px(x), cy: py(s.y[i]), r: 3, fill: color }, svg);
        });
      } else {
        let d = "";
        let pen = false;
        s.x.forEach((x, i) => {
          const y = s.y[i];
          if (y === null || !Number.isFinite(y)) { pen = false; return; }
          if (s.kind === "steps") {
            const w = s.w || 0;
            d += `${pen ? "L" : "M"}${px(x)},${py(y)}L${px(x + w)},${py(y)}`;
          } else d += `${pen ? "L" : "M"}${px(x)},${py(y)}`;
          pen = true;
        });
        el("path", { d, fill: "none", stroke: color, "stroke-width": 1.6, "stroke-dasharray": dash }, svg);
        if (s.marks) s.x.forEach((x, i) => s.y[i] !== null && el("circle", { cx: px(x), cy: py(s.y[i]), r: 2.2, fill: color }, svg));
      }
      if (s.label) legend.push([s.label, color, dash, s.kind]);
    });
    for (const h of spec.hlines || []) {
      el("line", { x1: L, y1: py(h.y), x2: W - R, y2: py(h.y), stroke: h.color || "#888", "stroke-dasharray": h.dash || "4 3" }, svg);
      if (h.label) legend.push([h.label, h.color || "#888", h.dash || "4 3", "line"]);
    }
    for (const v of spec.vlines || []) {
      el("line", { x1: px(v.x), y1: T, x2: px(v.x), y2: H - B, stroke: v.color || "#888", "stroke-dasharray": v.dash || "2 3" }, svg);
      if (v.label) legend.push([v.label, v.color || "#888", v.dash || "2 3", "line"]);
    }
    legend.forEach(([label, color, dash, kind], i) => {
      const y = T + 10 + i * 15;
      const x = W - R - 200;
      if (kind === "bar") el("rect", { x, y: y - 8, width: 16, height: 9, fill: color }, svg);
      else el("line", { x1: x, y1: y - 4, x2: x + 16, y2: y - 4, stroke: color, "stroke-width": 2, "stroke-dasharray": dash }, svg);
      el("text", { x: x + 21, y }, svg, label);
    });
  }

  // -- each plot, from its data (the JSON replay/_plots.py writes) ---------------------------------

  const sum = (a) => a.reduce((x, y) => x + (y || 0), 0);
  const ratio = (top, bottom) => top.map((t, i) => (bottom[i] ? t / bottom[i] : null));

  const PLOTS = {
    convergence(j) {
      if (j.rounds.length <= 1) return { title: "Undecided steps after each voting round", empty: "no step was decided" };
      const series = [{ kind: "line", x: j.rounds, y: j.undecided, label: "measured", marks: true }];
      if (j.predicted) {
        series.push({ kind: "line", x: j.predicted.map((_, r) => r), y: j.predicted, color: PREDICTED, dash: "6 4", label: `predicted (p = ${j.p.toFixed(4)}, one rival)` });
      }
      return {
        title: "Undecided steps after each voting round",
        xlabel: "voting round (valid votes)",
        ylabel: "undecided steps",
        yscale: "symlog",
        series,
        vlines: j.ks.map((k) => ({ x: k, label: `k = ${k}` })),
      };
    },
    votes(j) {
      if (!j.votes.length) return { title: "Votes needed per decided step", empty: "no step was decided" };
      const series = [{ kind: "bar", x: j.votes.map((v) => v - 0.4), y: j.steps, w: 0.8, label: "measured" }];
      if (j.predicted) {
        const shown = j.predicted_rounds.map((r, i) => [r, j.predicted[i]]).filter(([, n]) => n >= 0.01);
        series.push({ kind: "points", x: shown.map(([r]) => r), y: shown.map(([, n]) => n), color: PREDICTED, label: "predicted" });
      }
      return { title: "Votes needed per decided step", xlabel: "votes", ylabel: "steps", yscale: "symlog", series };
    },
    samples(j) {
      if (!sum(j.decided)) return { title: "Samples per decided step", empty: "no step was decided" };
      const hlines = [];
      if (j.eq16_samples !== null) {
        hlines.push({ y: j.eq16_samples, color: PREDICTED, dash: "6 4", label: `Eq 16 / v = ${j.eq16_samples.toFixed(2)}` });
        hlines.push({ y: j.eq16_votes, color: PREDICTED, dash: "2 3", label: `Eq 16 = ${j.eq16_votes.toFixed(2)}` });
      }
      return {
        title: "Samples per decided step, against Eq 16",
        xlabel: "step",
        ylabel: "per decided step",
        series: [
          { kind: "steps", x: j.start, y: j.samples_per_step, w: j.width, label: "samples" },
          { kind: "steps", x: j.start, y: j.votes_per_step, w: j.width, label: "valid votes", color: COLORS[2] },
        ],
        hlines,
      };
    },
    red_flags(j) {
      const title = "Red-flagged share of the responses, over the steps";
      if (!sum(j.received)) return { title, empty: "no response received" };
      if (!sum(j.red_flags)) return { title, empty: `no red flags in ${sum(j.received)} responses` };
      const series = [];
      const bottom = j.start.map(() => 0);
      Object.entries(j.by_reason).forEach(([reason, counts], n) => {
        const share = counts.map((c, i) => (j.received[i] ? c / j.received[i] : 0));
        series.push({ kind: "bar", x: j.start, y: share, w: j.width, bottom: bottom.slice(), color: COLORS[n % COLORS.length], label: reason });
        share.forEach((s, i) => (bottom[i] += s));
      });
      const overall = sum(j.red_flags) / sum(j.received);
      return { title, xlabel: "step", ylabel: "share red-flagged", percent: true, series, hlines: [{ y: overall, label: `overall ${(overall * 100).toFixed(2)}%` }] };
    },
    tokens(j) {
      const title = "Red flags and wrong votes by output length";
      if (!sum(j.responses)) return { title, empty: "no response received" };
      const series = [{ kind: "steps", x: j.start, y: j.red_flag_rate, w: j.width, color: COLORS[3], label: "red-flagged responses" }];
      if (sum(j.judged)) series.push({ kind: "steps", x: j.start, y: j.against_rate, w: j.width, color: COLORS[4], label: `valid votes against the ${j.reference}` });
      return { title, xlabel: "output tokens", ylabel: "share", percent: true, series, vlines: j.max_tokens ? [{ x: j.max_tokens, label: `max tokens ${j.max_tokens}` }] : [] };
    },
    latency(j) {
      const title = "Latency of the responses";
      if (!j.counts.length) return { title, empty: j.responses ? "every latency was 0" : "no response received" };
      const edges = j.edges;
      return {
        title,
        xlabel: "seconds (log scale)",
        ylabel: "responses",
        xscale: "log",
        series: [{ kind: "bar", x: edges.slice(0, -1), y: j.counts, w: edges.slice(1).map((b, i) => b - edges[i]) }],
        vlines: Object.entries(j.quantiles).map(([name, v], i) => ({ x: v, color: "#000", dash: ["", "5 3", "2 3"][i], label: `${name} ${+v.toPrecision(3)} s` })),
      };
    },
    throughput(j) {
      const title = "Steps decided per second";
      if (!sum(j.decided)) return { title, empty: "no step was decided" };
      const mean = sum(j.decided) / (j.start.length * j.width);
      return { title, xlabel: "seconds since the run started", ylabel: "steps / s", series: [{ kind: "bar", x: j.start, y: j.steps_per_second, w: j.width }], hlines: [{ y: mean, label: `mean ${+mean.toPrecision(3)} steps/s` }] };
    },
    incidents(j) {
      const title = "Retries, failures, waits and breaker changes";
      const series = [];
      [["retries", COLORS[1]], ["failures", COLORS[3]], ["waits", COLORS[0]]].forEach(([name, color]) => {
        if (sum(j[name])) series.push({ kind: "steps", x: j.start, y: j[name], w: j.width, color, label: `${name} (${sum(j[name])})` });
      });
      const vlines = j.breaker_changes.map((b, i) => ({ x: b.t, color: "#000", label: i ? "" : "breaker changes" }));
      if (!series.length && !vlines.length) return { title, empty: "no retry, failure, wait or breaker change" };
      return { title, xlabel: "seconds since the run started", ylabel: `per ${+j.width.toPrecision(3)} s`, series, vlines };
    },
    cost(j) {
      const priced = j.measure === "cost_usd";
      const title = priced ? "Cumulative cost" : "Cumulative tokens (no price known)";
      if (!j.t.length) return { title, empty: "no response received" };
      return { title, xlabel: "seconds since the run started", ylabel: priced ? "USD" : "tokens", series: [{ kind: "line", x: j.t, y: j.value }] };
    },
    flag_reasons(j) {
      const title = "Red flags by reason";
      const reasons = Object.keys(j.red_flags);
      if (!j.responses) return { title, empty: "no response received" };
      if (!reasons.length) return { title, empty: `no red flags in ${j.responses} responses` };
      const labels = {};
      reasons.forEach((r, i) => (labels[i] = r));
      return { title, ylabel: "share of the responses", percent: true, xticks: reasons.map((_, i) => i), xtickLabels: labels, series: [{ kind: "bar", x: reasons.map((_, i) => i - 0.35), y: reasons.map((r) => j.red_flags[r] / j.responses), w: 0.7 }] };
    },
  };

  function draw(figure, name, json) {
    figure.dataset.json = JSON.stringify(json);
    chart(figure, PLOTS[name](json));
  }

  // -- the page ------------------------------------------------------------------------------------

  function setValue(id, value, text) {
    const node = $(id);
    node.dataset.value = String(value);
    node.textContent = text === undefined ? String(value) : text;
  }

  function render() {
    document.body.dataset.status = S.status;
    document.body.dataset.seq = String(S.lastSeq);
    $("run-id").textContent = runId;
    $("subtitle").textContent = S.task ? `${S.task} ${JSON.stringify(S.params)} on ${S.models.join(", ")}${S.k ? `, k = ${S.kNow}` : ""}` : "";
    const running = S.status === "running" || S.status === "queued";
    $("status").textContent = running ? `${S.status}…` : S.status + (S.reason ? `: ${S.reason}` : "");
    const flags = sum(Object.values(S.redFlags));
    const total = S.maxSteps || null;
    $("progress-bar").style.width = total ? `${Math.min(100, (100 * S.steps) / total)}%` : S.status === "succeeded" ? "100%" : "0";
    $("progress-text").textContent = total ? `${S.steps} of at most ${total} steps (${((100 * S.steps) / total).toFixed(1)}%)` : `${S.steps} steps`;
    setValue("steps", S.steps);
    const elapsed = S.lastT;
    const rate = elapsed > 0 ? S.decided / elapsed : 0;
    setValue("rate", rate, fmt(rate));
    const bins = S.byTime.get("decided");
    const recent = bins.slice(-8);
    $("rate-hint").textContent = recent.length ? `lately ${fmt(sum(recent) / (recent.length * S.byTime.width))}` : "";
    setValue("samples", S.samples);
    const perStep = S.decided ? S.decidedSamples / S.decided : 0;
    setValue("per-step", perStep, perStep.toFixed(3));
    setValue("red-flags", flags);
    const reasons = Object.entries(S.redFlags).map(([r, n]) => `${n} ${r}`).join(", ");
    $("red-flags-hint").textContent = S.received ? `${((100 * flags) / S.received).toFixed(2)}% of ${S.received}${reasons ? ": " + reasons : ""}` : "";
    setValue("failures", S.failures);
    $("failures-hint").textContent = Object.entries(S.failuresByKind).map(([k, n]) => `${n} ${k}`).join(", ");
    if (S.cost > 0) {
      $("spend-label").textContent = "cost";
      setValue("spend", S.cost, "$" + S.cost.toFixed(4));
      $("spend-hint").textContent = `${S.inTokens + S.outTokens} tokens`;
    } else {
      $("spend-label").textContent = "tokens (no price known)";
      setValue("spend", S.inTokens + S.outTokens, fmt(S.inTokens + S.outTokens));
      $("spend-hint").textContent = `${S.inTokens} in, ${S.outTokens} out`;
    }
    setValue("votes", S.votes);
    const conv = liveConvergence();
    const pred = conv.pred;
    delete conv.pred;
    $("per-step-hint").textContent = pred ? `Eq 16 / v: ${pred.samples.toFixed(3)}` : "";
    $("votes-hint").textContent = pred ? `p ≈ ${pred.p.toFixed(4)}` : "";
    if (!S.calibration) {
      draw($("live-convergence"), "convergence", conv);
      const t = coarsen(S.byTime.width, [bins], PLOT_BINS);
      const [perBin] = t.columns;
      draw($("live-throughput"), "throughput", {
        width: t.width,
        start: perBin.map((_, i) => i * t.width),
        decided: perBin,
        steps_per_second: perBin.map((n) => n / t.width),
      });
      const c = coarsen(S.byStep.width, [S.byStep.get("decided"), S.byStep.get("samples"), S.byStep.get("votes")], PLOT_BINS);
      const [decided, samples, votes] = c.columns;
      const starts = decided.map((_, i) => i * c.width);
      draw($("live-samples"), "samples", {
        width: c.width,
        start: starts,
        decided,
        samples,
        votes,
        samples_per_step: ratio(samples, decided),
        votes_per_step: ratio(votes, decided),
        eq16_votes: pred ? pred.votes : null,
        eq16_samples: pred ? pred.samples : null,
      });
    }
  }

  let dirty = false;
  function later() {
    if (dirty) return;
    dirty = true;
    setTimeout(() => {
      dirty = false;
      render();
    }, 150);
  }

  function showError(text) {
    $("error").hidden = false;
    $("error").textContent = text;
  }

  async function get(path) {
    const r = await fetch(`${base}/${path}`, { headers: headers(), cache: "no-store" });
    if (r.status === 401) {
      askToken();
      throw new Error("the service asks for its token");
    }
    if (!r.ok) {
      let message = `${r.status}`;
      try {
        message += ": " + (await r.json()).error;
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return r.json();
  }

  function askToken() {
    const form = $("token-form");
    form.hidden = false;
    form.onsubmit = (ev) => {
      ev.preventDefault();
      token = $("token-input").value.trim();
      sessionStorage.setItem("maker-token", token);
      form.hidden = true;
      $("error").hidden = true;
      start();
    };
  }

  async function follow() {
    // The run's events after the last one folded, as server-sent events; again from there
    // whenever the connection drops, until run_finished.
    while (S.status === "running" || S.status === "queued" || S.status === "connecting") {
      try {
        // No Last-Event-ID before the first event: the stream then starts at the beginning.
        const h = Object.assign(S.lastSeq >= 0 ? { "Last-Event-ID": String(S.lastSeq) } : {}, headers());
        const r = await fetch(`${base}/events`, { headers: h, cache: "no-store" });
        if (r.status === 401) {
          askToken();
          return false;
        }
        if (!r.ok) throw new Error(`events: ${r.status}`);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
            if (!data) continue; // a keep-alive comment
            const event = JSON.parse(data);
            if (event.seq <= S.lastSeq) continue;
            apply(event);
            later();
            if (event.type === "run_finished") return true;
          }
        }
      } catch (err) {
        showError(`the event stream broke (${err.message}); reconnecting`);
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    return true;
  }

  function table(parent, head, rows) {
    const t = document.createElement("table");
    const tr = t.insertRow();
    for (const h of head) {
      const th = document.createElement("th");
      th.textContent = h;
      tr.appendChild(th);
    }
    for (const row of rows) {
      const r = t.insertRow();
      for (const cell of row) {
        const td = r.insertCell();
        if (cell instanceof Node) td.appendChild(cell);
        else td.textContent = String(cell);
      }
    }
    parent.appendChild(t);
    return t;
  }

  function renderFinal(answer) {
    // The report of the ended run, drawn from the server's data: the same plots as `maker report`.
    const r = answer.report;
    const final = $("final");
    final.hidden = false;
    final.dataset.seq = String(r.last_seq);
    const s = r.summary;
    final.dataset.summary = JSON.stringify(s);
    $("final-summary").textContent = `${s.status}${s.reason ? " (" + s.reason + ")" : ""}: ${s.steps} steps, ${s.samples} samples, ${s.votes} votes, ${s.red_flags} red flags, ${s.failures} failures in ${s.wall_s.toFixed(2)} s`;
    const cal = $("calibration");
    cal.textContent = "";
    if (r.calibration) {
      const c = r.calibration;
      const f = (x, d) => (x === null ? "unknown" : x.toFixed(d));
      table(cal, ["model", "p", "95% interval", "v", "responses", "red flags", "cost per call"], [[
        c.model, f(c.p, 4), c.p === null ? "" : `${c.p_low.toFixed(4)} to ${c.p_high.toFixed(4)}`, f(c.v, 4), c.n,
        Object.entries(c.red_flags).map(([k, n]) => `${n} ${k}`).join(", ") || "none",
        c.cost_per_call ? "$" + c.cost_per_call.toFixed(6) : "unknown (no price known)",
      ]]);
    }
    const charts = $("final-charts");
    charts.textContent = "";
    for (const [name, json] of Object.entries(answer.plots)) {
      if (!PLOTS[name]) continue;
      const figure = document.createElement("figure");
      figure.className = "chart";
      figure.id = `final-${name}`;
      charts.appendChild(figure);
      draw(figure, name, json);
    }
    $("hardest-title").hidden = !r.hardest.length;
    if (r.hardest.length) {
      const rows = r.hardest.map((h) => {
        const details = document.createElement("details");
        const summary = document.createElement("summary");
        summary.textContent = `${h.events_total} events`;
        const pre = document.createElement("pre");
        pre.textContent = h.events.map((e) => JSON.stringify(e)).join("\n");
        details.append(summary, pre);
        const tally = Object.entries(h.tally).sort((a, b) => b[1] - a[1]).map(([a, n]) => `${n} × ${a}`).join("\n");
        return [h.step, h.votes, h.samples, h.red_flags, h.decided, tally, details];
      });
      const holder = document.createElement("div");
      const t = table(holder, ["step", "votes", "samples", "red flags", "decided", "tally", "events"], rows);
      t.querySelectorAll("tr td:nth-child(6)").forEach((td) => (td.className = "answer"));
      t.id = "hardest";
      $("hardest").replaceWith(t);
    }
    document.body.dataset.final = "shown";
  }

  async function start() {
    try {
      const answer = await get("report");
      S.maxSteps = answer.max_steps;
      document.body.dataset.snapshotSeq = String(answer.report ? answer.report.last_seq : -1);
      if (answer.report) fromReport(answer.report);
      else S.status = answer.status;
      render();
      if (answer.report && S.status !== "running") {
        renderFinal(answer); // a finished run: the same page, from the log
        return;
      }
      if (!(await follow())) return;
      render();
      renderFinal(await get("report"));
    } catch (err) {
      showError(err.message);
    }
  }

  start();
})();
