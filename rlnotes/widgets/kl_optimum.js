// Chapter 4: the maximiser of E_pi[r] - beta KL[pi || pi_ref] over a few responses,
// pi_beta(y) = pi_ref(y) exp(r(y) / beta) / Z (rlnotes.dpo_closed_form.optimal_policy, log_partition), and its
// expected reward, KL to pi_ref and entropy as beta moves.

// log pi_beta and log Z, in log space as rlnotes.dpo_closed_form.log_optimal_policy computes them.
function optimum(ref, rewards, beta) {
  const z = ref.map((p, i) => Math.log(p) + rewards[i] / beta);
  const logZ = logsumexp(z);
  const logPi = z.map((v) => v - logZ);
  const pi = logPi.map(Math.exp);
  const expectedReward = dot(pi, rewards);
  const kl = pi.reduce((s, p, i) => s + p * (logPi[i] - Math.log(ref[i])), 0);
  const entropy = -pi.reduce((s, p, i) => s + p * logPi[i], 0);
  return { pi, logZ, expectedReward, kl, entropy };
}

function drawOptimum(svg, { beta, ref_probs: ref, rewards }) {
  const now = optimum(ref, rewards, beta);
  const bars = panel(svg, { x: 60, y: 30, w: 300, h: 250 }, [0, ref.length], [0, 1], "response y (its reward r(y))",
                     "probability", ref.map((_, i) => [i + 0.5, `y${i + 1} (${rewards[i]})`]));
  ref.forEach((p, i) => {
    const x0 = bars.x(i + 0.12), x1 = bars.x(i + 0.88);
    node("rect", { x: x0, y: bars.y(now.pi[i]), width: x1 - x0, height: bars.y(0) - bars.y(now.pi[i]),
                   fill: "#1f77b4", "data-name": `pi_beta(y${i + 1})`, "data-value": now.pi[i] }, bars.plot);
    node("rect", { x: x0, y: bars.y(p), width: x1 - x0, height: bars.y(0) - bars.y(p), fill: "none",
                   stroke: "#444", "stroke-dasharray": "4,3", "stroke-width": 1.5 }, bars.plot);
    label(bars.plot, (x0 + x1) / 2, bars.y(now.pi[i]) - 4, fmt(now.pi[i], 2), { "text-anchor": "middle", "font-size": 11 });
  });
  label(svg, 70, 48, "π_β (blue) against π_ref (dashed)");
  const logBetas = [];
  for (let i = 0; i <= 150; i++) logBetas.push(-2 + (3 * i) / 150);
  const sweep = logBetas.map((lb) => optimum(ref, rewards, 10 ** lb));
  const curves = panel(svg, { x: 460, y: 30, w: 300, h: 250 }, [-2, 1], [-0.6, 2.5], "β (log scale)", "",
                       [[-2, "0.01"], [-1, "0.1"], [0, "1"], [1, "10"]]);
  const series = [["expectedReward", "E[r] under π_β", "#1f77b4"], ["kl", "KL[π_β ‖ π_ref]", "#d62728"],
                  ["entropy", "entropy of π_β", "#2ca02c"]];
  series.forEach(([key, name, colour], k) => {
    polyline(curves.plot, sweep.map((o, i) => [curves.x(logBetas[i]), curves.y(o[key])]), { stroke: colour, "stroke-width": 2 });
    node("circle", { cx: curves.x(Math.log10(beta)), cy: curves.y(now[key]), r: 4.5, fill: colour,
                     "data-name": name, "data-value": now[key] }, curves.plot);
    label(svg, 610, 48 + 16 * k, `${name} = ${fmt(now[key], 3)}`, { fill: colour });
  });
  node("line", { x1: curves.x(Math.log10(beta)), x2: curves.x(Math.log10(beta)), y1: curves.y(-0.6), y2: curves.y(2.5),
                 stroke: "#555", "stroke-dasharray": "3,3" }, curves.plot);
  label(svg, 410, 20, `β = ${fmt(beta, 3)}:  π_β ∝ π_ref exp(r / β),  log Z = ${fmt(now.logZ, 3)}`,
        { "text-anchor": "middle", "font-weight": "bold" });
  const summary = `At β = ${fmt(beta, 3)} the optimum π_β = (${now.pi.map((p) => fmt(p, 3)).join(", ")}) against ` +
    `π_ref = (${ref.join(", ")}): expected reward ${fmt(now.expectedReward, 3)}, KL to π_ref ${fmt(now.kl, 3)}, ` +
    `entropy ${fmt(now.entropy, 3)}.`;
  return { values: { beta, pi: now.pi, log_z: now.logZ, expected_reward: now.expectedReward, kl: now.kl,
                     entropy: now.entropy }, summary };
}

export default {
  render: makeRender({ name: "kl_regularised_optimum", width: 800, height: 330, names: ["beta", "ref_probs", "rewards"],
                       title: "The optimum of the KL-regularised objective as β moves (chapter 4)", draw: drawOptimum }),
};
