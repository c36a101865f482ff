// Chapter 7: best-of-n over a few responses, exactly. pi_bon(y) = F(y)^n - F_<(y)^n, ties sharing their
// group's mass in proportion to pi_ref (rlnotes.bestofn.bon_distribution), its KL to pi_ref (exact_bon_kl)
// against the closed form log n - (n - 1)/n (bon_kl), and the expected proxy and true rewards.

function bonDistribution(ref, score, n) {
  const levels = [...new Set(score)].sort((a, b) => a - b);
  const mass = levels.map((v) => ref.reduce((s, p, i) => s + (score[i] === v ? p : 0), 0));
  let below = 0;
  const top = mass.map((m) => {
    const F = Math.min(below + m, 1);
    const t = F ** n - below ** n;
    below = F;
    return t;
  });
  return ref.map((p, i) => {
    const g = levels.indexOf(score[i]);
    return mass[g] > 0 ? (top[g] * p) / mass[g] : 0;
  });
}

function bonKL(ref, score, n) {
  const q = bonDistribution(ref, score, n);
  return Math.max(0, q.reduce((s, v, i) => s + (v > 0 ? v * (Math.log(v) - Math.log(ref[i])) : 0), 0));
}

const closedFormKL = (n) => Math.log(n) - (n - 1) / n;

function drawBestOfN(svg, { n, ref_probs: ref, proxy, true_reward: truth }) {
  const q = bonDistribution(ref, proxy, n);
  const kl = bonKL(ref, proxy, n), bound = closedFormKL(n);
  const eProxy = dot(q, proxy), eTrue = dot(q, truth);
  const bars = panel(svg, { x: 60, y: 40, w: 300, h: 240 }, [0, ref.length], [0, 1],
                     "response y (proxy r_φ, true r*)",
                     "probability", ref.map((_, i) => [i + 0.5, `${proxy[i]}, ${truth[i]}`]));
  ref.forEach((p, i) => {
    const x0 = bars.x(i + 0.12), x1 = bars.x(i + 0.88);
    node("rect", { x: x0, y: bars.y(q[i]), width: x1 - x0, height: bars.y(0) - bars.y(q[i]),
                   fill: "#1f77b4", "data-name": `pi_bon(y${i + 1})`, "data-value": q[i] }, bars.plot);
    node("rect", { x: x0, y: bars.y(p), width: x1 - x0, height: bars.y(0) - bars.y(p), fill: "none",
                   stroke: "#444", "stroke-dasharray": "4,3", "stroke-width": 1.5 }, bars.plot);
  });
  label(svg, 70, 58, "π_bon (blue) against π_ref (dashed)");
  const ns = [];
  for (let m = 1; m <= 256; m++) ns.push(m);
  const sweep = ns.map((m) => {
    const qm = bonDistribution(ref, proxy, m);
    return [Math.sqrt(bonKL(ref, proxy, m)), dot(qm, proxy), dot(qm, truth)];
  });
  const dMax = Math.ceil(2 * sweep[sweep.length - 1][0]) / 2;
  const curves = panel(svg, { x: 460, y: 40, w: 300, h: 240 }, [0, dMax], [-1, 3],
                       "√KL(π_bon ‖ π_ref)", "expected reward");
  [[1, "E[r_φ] (proxy)", "#ff7f0e", eProxy], [2, "E[r*] (true)", "#2ca02c", eTrue]].forEach(([k, name, colour, now], j) => {
    polyline(curves.plot, sweep.map((s) => [curves.x(s[0]), curves.y(s[k])]), { stroke: colour, "stroke-width": 2 });
    node("circle", { cx: curves.x(Math.sqrt(kl)), cy: curves.y(now), r: 5, fill: colour,
                     "data-name": name, "data-value": now }, curves.plot);
    label(svg, 470, 58 + 16 * j, `${name} = ${fmt(now, 3)}`, { fill: colour });
  });
  label(svg, 410, 22, `n = ${n}:  KL = ${fmt(kl, 3)} (exact) ≤ log n − (n − 1)/n = ${fmt(bound, 3)}`,
        { "text-anchor": "middle", "font-weight": "bold" });
  const summary = `Best of n = ${n} by the proxy: π_bon = (${q.map((v) => fmt(v, 3)).join(", ")}), ` +
    `KL to π_ref ${fmt(kl, 3)} (closed-form bound ${fmt(bound, 3)}), expected proxy ${fmt(eProxy, 3)}, ` +
    `expected true reward ${fmt(eTrue, 3)}.`;
  return { values: { n, pi_bon: q, kl, kl_bound: bound, expected_proxy: eProxy, expected_true: eTrue }, summary };
}

export default {
  render: makeRender({ name: "best_of_n", width: 800, height: 340, names: ["n", "ref_probs", "proxy", "true_reward"],
                       title: "Best-of-n by a proxy reward as n grows (chapter 7)", draw: drawBestOfN }),
};
