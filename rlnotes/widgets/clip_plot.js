// Chapter 3: L^CLIP(r) = min(r A, clip(r, 1 - eps, 1 + eps) A), eq. 7 of the PPO paper, for one
// sample (rlnotes.ppo.clipped_surrogate), with the region where its gradient is 0
// (rlnotes.widgets.flat_region).

const R_MAX = 2.0;

function lClip(r, eps, A) {
  return Math.min(r * A, Math.min(Math.max(r, 1 - eps), 1 + eps) * A);
}

function flatRegion(eps, A) {
  if (A > 0) return 1 + eps < R_MAX ? [1 + eps, R_MAX] : null;
  if (A < 0) return eps < 1 ? [0, 1 - eps] : null;
  return [0, R_MAX];
}

function drawClip(svg, { eps, advantage: A }) {
  const rs = [];
  for (let i = 0; i <= 200; i++) rs.push((R_MAX * i) / 200);
  rs.push(1 - eps, 1 + eps);
  const grid = [...new Set(rs.filter((r) => r >= 0 && r <= R_MAX).map((r) => +r.toFixed(12)))].sort((a, b) => a - b);
  const curve = grid.map((r) => [r, lClip(r, eps, A)]);
  const { x, y, plot } = panel(svg, { x: 60, y: 30, w: 520, h: 230 }, [0, R_MAX], [-2.5, 2.5],
                               "probability ratio r", "L^CLIP for one sample");
  const flat = flatRegion(eps, A);
  if (flat) {
    node("rect", { x: x(flat[0]), y: y(2.5), width: x(flat[1]) - x(flat[0]), height: y(-2.5) - y(2.5),
                   fill: "#ff7f0e", "fill-opacity": 0.15, "data-name": "flat", "data-value": flat.join(",") }, plot);
    label(plot, (x(flat[0]) + x(flat[1])) / 2, y(A >= 0 ? 2.2 : -2.2), "gradient 0",
          { "text-anchor": "middle", fill: "#c55a00" });
  }
  node("line", { x1: x(0), x2: x(R_MAX), y1: y(0), y2: y(0), stroke: "black", "stroke-width": 0.6 }, plot);
  for (const edge of [1 - eps, 1 + eps]) {
    node("line", { x1: x(edge), x2: x(edge), y1: y(-2.5), y2: y(2.5), stroke: "#aaa", "stroke-dasharray": "2,3" }, plot);
  }
  polyline(plot, grid.map((r) => [x(r), y(r * A)]), { stroke: "#888", "stroke-dasharray": "6,4", "stroke-width": 1.2 });
  polyline(plot, curve.map(([r, l]) => [x(r), y(l)]), { stroke: "#1f77b4", "stroke-width": 2.5, "data-name": "L^CLIP" });
  node("circle", { cx: x(1), cy: y(A), r: 5, fill: "red", "data-name": "r=1", "data-value": A }, plot);
  if (A !== 0) {
    const lo = A > 0 ? 0 : Math.max(1 - eps, 0), hi = A > 0 ? Math.min(1 + eps, R_MAX) : R_MAX;
    const r = lo + (A > 0 ? 0.3 : 0.45) * (hi - lo);
    label(plot, x(r) + 6, y(r * A) + (A > 0 ? 16 : -8), `gradient ${A > 0 ? "+" : "-"}`, { fill: "#1f77b4" });
  }
  const legend = node("g", {}, svg);
  polyline(legend, [[70, 44], [95, 44]], { stroke: "#1f77b4", "stroke-width": 2.5 });
  label(legend, 100, 48, "L^CLIP");
  polyline(legend, [[160, 44], [185, 44]], { stroke: "#888", "stroke-dasharray": "6,4" });
  label(legend, 190, 48, "r A (unclipped)");
  const sign = A > 0 ? ">" : A < 0 ? "<" : "=";
  label(svg, 320, 20, `A ${sign} 0  (A = ${fmt(A, 2)}, ε = ${fmt(eps, 2)})`, { "text-anchor": "middle", "font-weight": "bold" });
  const flatText = flat ? `flat (gradient 0) for r in [${fmt(flat[0], 2)}, ${fmt(flat[1], 2)}]` : "nowhere flat";
  const summary = `L^CLIP(r) for ε = ${fmt(eps, 2)} and A = ${fmt(A, 2)}: equal to A = ${fmt(A, 2)} at r = 1, ` +
    `${flatText}, slope A elsewhere; at r = 1.5 it is ${fmt(lClip(1.5, eps, A), 3)}.`;
  return { values: { eps, advantage: A, curve, flat, at_one: A }, summary };
}

export default {
  render: makeRender({ name: "clip_plot", names: ["eps", "advantage"], width: 600, height: 300,
                       title: "The clipped surrogate L^CLIP against the probability ratio r (PPO, eq. 7)",
                       draw: drawClip }),
};
