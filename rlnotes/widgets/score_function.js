// Chapter 1: score-function estimates g_hat = (1/n) sum_i grad log pi(a_i) (r_i - b) of the gradient
// of J(theta) = sum_a pi(a) mu_a on a three-armed softmax bandit (rlnotes.bandits), drawn around the
// exact gradient pi * (mu - J). The gradient's entries sum to 0 (so do the scores e_a - pi), so its
// first two entries show all of it.

// SoftmaxBandit.sample then score_function_samples(...).mean(0): one estimate from n samples.
function estimate(means, theta, noise, n, b, rand) {
  const pi = softmax(theta), g = pi.map(() => 0);
  for (let i = 0; i < n; i++) {
    let u = rand.uniform(), a = 0;
    while (a < pi.length - 1 && u >= pi[a]) u -= pi[a++];        // a ~ pi_theta
    const reward = means[a] + noise * rand.normal();
    for (let k = 0; k < pi.length; k++) g[k] += (((k === a ? 1 : 0) - pi[k]) * (reward - b)) / n;   // score * (r - b)
  }
  return g;
}

// sqrt(trace Var[grad log pi(a) (r - b)] / n), exactly: E||e_a - pi||^2 ((mu_a - b)^2 + noise^2) - ||g||^2.
function theorySpread(means, theta, noise, n, b) {
  const pi = softmax(theta), g = exactGradient(means, theta);
  const second = pi.reduce((s, p, a) => {
    const norm2 = pi.reduce((t, q, k) => t + ((k === a ? 1 : 0) - q) ** 2, 0);
    return s + p * norm2 * ((means[a] - b) ** 2 + noise ** 2);
  }, 0);
  return Math.sqrt((second - dot(g, g)) / n);
}

function drawScore(svg, { n, baseline, means, theta, noise_std: noise, estimates: count, seed }) {
  const J = dot(softmax(theta), means), b = baseline ? J : 0;
  const exact = exactGradient(means, theta);
  const rand = generator(seed);
  const points = [];
  for (let j = 0; j < count; j++) points.push(estimate(means, theta, noise, n, b, rand));
  const mean = exact.map((_, k) => points.reduce((s, p) => s + p[k], 0) / count);
  const spread = Math.sqrt(points.reduce((s, p) => s + p.reduce((t, v, k) => t + (v - exact[k]) ** 2, 0), 0) / count);
  const theory = theorySpread(means, theta, noise, n, b);
  const half = 1.0;
  const { x, y, plot } = panel(svg, { x: 70, y: 30, w: 300, h: 300 }, [exact[0] - half, exact[0] + half],
                               [exact[1] - half, exact[1] + half], "entry 1 of the gradient, ∂J/∂θ₁",
                               "entry 2, ∂J/∂θ₂");
  let outside = 0;
  for (const p of points) {
    if (Math.abs(p[0] - exact[0]) > half || Math.abs(p[1] - exact[1]) > half) outside++;
    node("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.2, fill: "#1f77b4", "fill-opacity": 0.45 }, plot);
  }
  node("circle", { cx: x(exact[0]), cy: y(exact[1]), r: theory / (2 * half) * 300, fill: "none",
                   stroke: "#555", "stroke-dasharray": "4,3" }, plot);
  node("circle", { cx: x(mean[0]), cy: y(mean[1]), r: 5, fill: "none", stroke: "#1f77b4", "stroke-width": 2 }, plot);
  node("path", { d: `M${x(exact[0]) - 7},${y(exact[1])}h14M${x(exact[0])},${y(exact[1]) - 7}v14`,
                 stroke: "red", "stroke-width": 3, "data-name": "exact gradient", "data-value": exact.join(",") }, plot);
  const text = [
    `${count} estimates, n = ${n} samples each`,
    baseline ? `baseline b = J(θ) = ${fmt(J, 3)}` : "no baseline (b = 0)",
    `exact ∇J = (${exact.map((v) => fmt(v, 3)).join(", ")})`,
    `mean of the estimates = (${mean.map((v) => fmt(v, 3)).join(", ")})`,
    `spread (RMS distance to ∇J): ${fmt(spread, 3)}`,
    `theory √(tr Var / n): ${fmt(theory, 3)} (dashed circle)`,
    `${outside} of ${count} outside the frame`,
  ];
  text.forEach((t, i) => label(svg, 390, 50 + 20 * i, t, i === 2 ? { fill: "red" } : {}));
  label(svg, 390, 50 + 20 * text.length + 10, "+ exact gradient, ○ mean of the estimates", { fill: "#555" });
  const summary = `${count} score-function estimates of the gradient, each from n = ${n} samples, ` +
    `${baseline ? `with baseline b = J(θ) = ${fmt(J, 3)}` : "without baseline"}: their spread around the exact ` +
    `gradient (${exact.map((v) => fmt(v, 3)).join(", ")}) is ${fmt(spread, 3)} (theory ${fmt(theory, 3)}).`;
  return { values: { n, baseline, b, exact, mean, spread, theory, outside, estimates: points }, summary };
}

export default {
  render: makeRender({ name: "score_function_estimates", width: 700, height: 370,
                       names: ["n", "baseline", "means", "theta", "noise_std", "estimates", "seed"],
                       title: "Score-function estimates of the policy gradient around the exact gradient (chapter 1)",
                       draw: drawScore }),
};
