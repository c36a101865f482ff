// Shared helpers of rlnotes' interactive figures. Python (rlnotes/widgets/interactive.py) puts this
// file in front of each figure's own file to make the figure's ES module (anywidget's _esm): the
// picture is computed here, in the browser, from the widget's traits, so it responds in the static
// book (no kernel) as well as in JupyterLab and Colab.
//
// Every figure writes the numbers it draws into the SVG's data-values attribute (JSON) and
// describes them in words in the SVG's <desc> and a caption under it (read by screen readers);
// tests/test_browser.py compares those numbers with the Python functions of rlnotes.

const SVG_NS = "http://www.w3.org/2000/svg";

// ids unique in the page: each figure's module is a separate module, so the counter is global
function uniqueId(prefix) {
  globalThis.rlnotesFigureIds = (globalThis.rlnotesFigureIds || 0) + 1;
  return `${prefix}-${globalThis.rlnotesFigureIds}`;
}

function node(tag, attrs, parent, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// A linear map from [d0, d1] onto [r0, r1].
function scale(d0, d1, r0, r1) {
  return (v) => r0 + ((v - d0) * (r1 - r0)) / (d1 - d0);
}

function ticks(lo, hi, count) {
  const span = hi - lo, mag = 10 ** Math.floor(Math.log10(span / count));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count);
  const out = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + 1e-9 * step; t += step) out.push(+t.toFixed(10));
  return out;
}

// A number for people: `digits` decimals, no "-0".
function fmt(v, digits = 3) {
  const s = v.toFixed(digits);
  return /^-0\.?0*$/.test(s) ? s.slice(1) : s;
}

// A framed plot area with ticks and axis labels; returns the scales and a clipped group to draw in.
function panel(svg, box, xdom, ydom, xlabel, ylabel, xticks) {
  const g = node("g", { class: "panel" }, svg);
  const x = scale(xdom[0], xdom[1], box.x, box.x + box.w);
  const y = scale(ydom[0], ydom[1], box.y + box.h, box.y);
  const id = uniqueId("rlnotes-clip");
  node("rect", { x: box.x, y: box.y, width: box.w, height: box.h }, node("clipPath", { id }, g));
  node("rect", { x: box.x, y: box.y, width: box.w, height: box.h, fill: "white", stroke: "#888" }, g);
  for (const [v, label] of xticks || ticks(xdom[0], xdom[1], 5).map((t) => [t, String(t)])) {
    node("line", { x1: x(v), x2: x(v), y1: box.y + box.h, y2: box.y + box.h + 4, stroke: "#888" }, g);
    node("text", { x: x(v), y: box.y + box.h + 15, "text-anchor": "middle", fill: "#333" }, g, label);
  }
  for (const t of ticks(ydom[0], ydom[1], 5)) {
    node("line", { x1: box.x - 4, x2: box.x, y1: y(t), y2: y(t), stroke: "#888" }, g);
    node("text", { x: box.x - 6, y: y(t) + 4, "text-anchor": "end", fill: "#333" }, g, String(t));
  }
  node("text", { x: box.x + box.w / 2, y: box.y + box.h + 32, "text-anchor": "middle" }, g, xlabel);
  node("text", { x: box.x - 38, y: box.y + box.h / 2, "text-anchor": "middle",
                 transform: `rotate(-90 ${box.x - 38} ${box.y + box.h / 2})` }, g, ylabel);
  return { x, y, plot: node("g", { "clip-path": `url(#${id})` }, g) };
}

function polyline(parent, points, attrs) {
  const d = points.map(([px, py]) => `${px.toFixed(2)},${py.toFixed(2)}`).join(" ");
  return node("polyline", { points: d, fill: "none", ...attrs }, parent);
}

function label(parent, px, py, text, attrs) {
  return node("text", { x: px, y: py, ...attrs }, parent, text);
}

// --- the formulas of rlnotes.bandits and rlnotes.dpo ---------------------------------------------

function logsumexp(z) {
  const m = Math.max(...z);
  return m + Math.log(z.reduce((s, v) => s + Math.exp(v - m), 0));
}

// rlnotes.bandits.softmax: exp(theta_a) / sum_b exp(theta_b), computed stably.
function softmax(theta) {
  const lse = logsumexp(theta);
  return theta.map((t) => Math.exp(t - lse));
}

const dot = (a, b) => a.reduce((s, v, i) => s + v * b[i], 0);
const add = (a, b, t = 1) => a.map((v, i) => v + t * b[i]);

// rlnotes.bandits.kl: KL[pi_old || pi] = sum_a pi_old(a) (log pi_old(a) - log pi(a)).
function banditKL(thetaOld, theta) {
  const lo = logsumexp(thetaOld), ln = logsumexp(theta);
  return thetaOld.reduce((s, t, a) => s + Math.exp(t - lo) * ((t - lo) - (theta[a] - ln)), 0);
}

// SoftmaxBandit.exact_gradient: grad J = pi * (mu - J).
function exactGradient(means, theta) {
  const pi = softmax(theta), J = dot(pi, means);
  return pi.map((p, a) => p * (means[a] - J));
}

// --- a seeded generator (mulberry32) and normal draws (Box-Muller) --------------------------------

function generator(seed) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return { uniform, normal };
}

// --- the widget ----------------------------------------------------------------------------------

// ipywidgets' sliders carry role="slider" but no accessible name: give each of the figure's
// sliders its description (they are the figure's siblings in the box that rlnotes builds).
function labelSliders(el, tries = 50) {
  const box = el.closest(".rlnotes-explorer");
  const sliders = box ? [...box.querySelectorAll(".widget-slider")] : [];
  for (const slider of sliders) {
    const text = slider.querySelector(".widget-label")?.textContent?.trim();
    slider.querySelectorAll("[role=slider]").forEach((h) => text && h.setAttribute("aria-label", text));
    const readout = slider.querySelector(".widget-readout");
    if (readout && text) readout.setAttribute("aria-label", `${text}: value`);
  }
  if (tries > 0 && (!sliders.length || sliders.some((s) => !s.querySelector("[role=slider][aria-label]")))) {
    setTimeout(() => labelSliders(el, tries - 1), 100);
  }
}

// The render function of anywidget: draw on every change of the traits in spec.names.
// spec.draw(svg, m) draws from the trait values m and returns {values, summary}.
function makeRender(spec) {
  return function render({ model, el }) {
    const id = uniqueId("rlnotes-figure");
    const wrap = document.createElement("figure");
    wrap.className = "rlnotes-figure";
    wrap.style.margin = "0.3em 0";
    const svg = node("svg", {
      viewBox: `0 0 ${spec.width} ${spec.height}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc`,
      "data-figure": spec.name, style: `width: 100%; max-width: ${spec.width}px; height: auto; font: 12px sans-serif`,
    });
    const caption = document.createElement("figcaption");
    caption.setAttribute("aria-live", "polite");
    caption.style.cssText = "font-size: 0.85em; color: #333; max-width: " + spec.width + "px";
    wrap.append(svg, caption);
    el.appendChild(wrap);
    const draw = () => {
      svg.replaceChildren();
      const m = Object.fromEntries(spec.names.map((n) => [n, model.get(n)]));
      node("title", { id: `${id}-title` }, svg, spec.title);
      const desc = node("desc", { id: `${id}-desc` }, svg);
      const { values, summary } = spec.draw(svg, m);
      desc.textContent = summary;
      caption.textContent = summary;
      svg.setAttribute("data-values", JSON.stringify(values));
    };
    const events = spec.names.map((n) => `change:${n}`);
    for (const e of events) model.on(e, draw);
    draw();
    labelSliders(el);
    return () => events.forEach((e) => model.off(e, draw));
  };
}
