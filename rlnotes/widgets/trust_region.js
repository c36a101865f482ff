// Chapter 2: one update of a three-armed softmax bandit on the probability simplex. The KL ball
// {pi : KL[pi_old || pi] = delta}; the plain gradient step lr g; the natural-gradient step beta s with
// s = F^+ g, F = diag(pi) - pi pi^T (rlnotes.bandits.fisher) and beta = sqrt(2 delta / s^T F s)
// (eq-natural-step); and the step TRPO accepts: beta s shrunk until the exact KL <= delta and the
// gain > 0 (rlnotes.trpo.line_search).

const BASIS = [[1 / Math.SQRT2, -1 / Math.SQRT2, 0], [1 / Math.sqrt(6), 1 / Math.sqrt(6), -2 / Math.sqrt(6)]];

function fisherMatrix(theta) {
  const pi = softmax(theta);
  return pi.map((p, i) => pi.map((q, j) => (i === j ? p : 0) - p * q));
}

const matVec = (M, v) => M.map((row) => dot(row, v));

// F^+ g for g orthogonal to 1 (the gradient's entries sum to 0): solve F s = g on the plane
// orthogonal to 1, which holds F's range; that is the minimum-norm solution pinv(F) g.
function naturalDirection(F, g) {
  const FE = BASIS.map((e) => matVec(F, e));
  const [[a, b], [c, d]] = BASIS.map((e) => FE.map((fe) => dot(e, fe)));
  const [h0, h1] = BASIS.map((e) => dot(e, g));
  const det = a * d - b * c;
  const c0 = (d * h0 - b * h1) / det, c1 = (a * h1 - c * h0) / det;
  return add(BASIS[0].map((v) => v * c0), BASIS[1], c1);
}

// rlnotes.trpo.line_search with evaluate(step) = (J(theta_old + step) - J(theta_old), KL).
function lineSearch(means, thetaOld, full, delta, maxBacktracks, shrink) {
  const J0 = dot(softmax(thetaOld), means);
  const trials = [];
  for (let i = 0; i < maxBacktracks; i++) {
    const step = full.map((v) => v * shrink ** i);
    const theta = add(thetaOld, step);
    const improvement = dot(softmax(theta), means) - J0, kl = banditKL(thetaOld, theta);
    trials.push([improvement, kl]);
    if (Number.isFinite(improvement) && Number.isFinite(kl) && improvement > 0 && kl <= delta) {
      return { step, accepted: true, backtracks: i, improvement, kl, trials };
    }
  }
  return { step: full.map(() => 0), accepted: false, backtracks: maxBacktracks, improvement: 0, kl: 0, trials };
}

// The point at KL[pi_old || pi] = delta along theta_old + t d, t > 0 (the KL grows with t).
function klBoundary(thetaOld, d, delta) {
  let lo = 0, hi = 1;
  while (banditKL(thetaOld, add(thetaOld, d, hi)) < delta && hi < 1e6) hi *= 2;
  for (let i = 0; i < 80; i++) {
    const mid = (lo + hi) / 2;
    if (banditKL(thetaOld, add(thetaOld, d, mid)) < delta) lo = mid; else hi = mid;
  }
  return add(thetaOld, d, (lo + hi) / 2);
}

function drawTrust(svg, { delta, lr, means, theta_old: thetaOld, max_backtracks: maxBacktracks, shrink }) {
  const V = [[30, 330], [330, 330], [180, 330 - 300 * Math.sqrt(3) / 2]];
  const at = (theta) => { const p = softmax(theta); return [0, 1].map((c) => dot(p, V.map((v) => v[c]))); };
  const g = exactGradient(means, thetaOld), F = fisherMatrix(thetaOld);
  const s = naturalDirection(F, g), sFs = dot(s, matVec(F, s));
  const beta = Math.sqrt((2 * delta) / sFs), full = s.map((v) => beta * v);
  const search = lineSearch(means, thetaOld, full, delta, maxBacktracks, shrink);
  const plain = g.map((v) => lr * v), J0 = dot(softmax(thetaOld), means);
  const plainKL = banditKL(thetaOld, add(thetaOld, plain)), plainGain = dot(softmax(add(thetaOld, plain)), means) - J0;
  const contour = [];
  for (let k = 0; k < 120; k++) {
    const phi = (2 * Math.PI * k) / 120;
    contour.push(klBoundary(thetaOld, add(BASIS[0].map((v) => v * Math.cos(phi)), BASIS[1], Math.sin(phi)), delta));
  }
  const g0 = node("g", {}, svg);
  node("polygon", { points: V.map((v) => v.join(",")).join(" "), fill: "#fafafa", stroke: "#888" }, g0);
  const names = V.map((_, a) => `arm ${a + 1} (μ = ${means[a]})`);
  label(g0, V[0][0] - 10, V[0][1] + 18, names[0]);
  label(g0, V[1][0] - 60, V[1][1] + 18, names[1]);
  label(g0, V[2][0] + 10, V[2][1] + 4, names[2]);
  const path = (step, n = 40) => [...Array(n + 1).keys()].map((i) => at(add(thetaOld, step, i / n)));
  node("polygon", { points: contour.map((t) => at(t).join(",")).join(" "), fill: "#2ca02c", "fill-opacity": 0.12,
                    stroke: "#2ca02c", "data-name": "KL ball", "data-value": delta }, g0);
  polyline(g0, path(plain), { stroke: "#ff7f0e", "stroke-width": 2 });
  polyline(g0, path(full), { stroke: "#2ca02c", "stroke-width": 2, "stroke-dasharray": "5,3" });
  const marker = (theta, attrs) => { const [px, py] = at(theta); return node("circle", { cx: px, cy: py, r: 6, ...attrs }, g0); };
  marker(add(thetaOld, plain), { fill: "#ff7f0e", "data-name": "plain gradient step" });
  marker(add(thetaOld, full), { fill: "white", stroke: "#2ca02c", "stroke-width": 2.5, "data-name": "natural-gradient step" });
  marker(add(thetaOld, search.step), { fill: "#2ca02c", r: 4.5, "data-name": "TRPO step" });
  marker(thetaOld, { fill: "black", r: 4, "data-name": "pi_old" });
  const lines = [
    [`trust region: KL[π_old ‖ π] ≤ δ = ${fmt(delta, 4)} (green)`, "#2ca02c"],
    [`plain step θ + ${fmt(lr, 1)}·g: KL = ${fmt(plainKL, 4)}, gain ${fmt(plainGain, 4)}`, "#ff7f0e"],
    [`natural step β F⁺g, β = ${fmt(beta, 3)}: KL = ${fmt(search.trials[0][1], 4)} (○)`, "#2ca02c"],
    [search.accepted ? `TRPO accepts it after ${search.backtracks} backtrack(s) (●):` : "TRPO rejects every try: no step", "#1a6b1a"],
    [`    KL = ${fmt(search.kl, 4)} ≤ δ, gain J − J_old = ${fmt(search.improvement, 4)}`, "#1a6b1a"],
    [`π_old = (${softmax(thetaOld).map((p) => fmt(p, 3)).join(", ")}) (●, black)`, "#000"],
    [`g = (${g.map((v) => fmt(v, 3)).join(", ")}), F⁺g = (${s.map((v) => fmt(v, 2)).join(", ")})`, "#000"],
  ];
  lines.forEach(([t, colour], i) => label(svg, 350, 90 + 24 * i, t, { fill: colour }));
  const summary = `On the probability simplex of three arms, the KL ball of radius δ = ${fmt(delta, 4)} around π_old. ` +
    `The plain gradient step (learning rate ${fmt(lr, 1)}) reaches KL ${fmt(plainKL, 4)}; the natural-gradient step ` +
    `scaled by β = ${fmt(beta, 3)} reaches KL ${fmt(search.trials[0][1], 4)}; TRPO ` +
    (search.accepted ? `accepts it after ${search.backtracks} backtrack(s), at KL ${fmt(search.kl, 4)}.` : "rejects every try.");
  return {
    values: { delta, lr, g, pi_old: softmax(thetaOld), fisher: F, s, sFs, beta, full_step: full,
              full_step_kl: search.trials[0][1], trials: search.trials, accepted: search.accepted,
              backtracks: search.backtracks, step: search.step, kl: search.kl, improvement: search.improvement,
              plain_step: plain, plain_kl: plainKL, plain_gain: plainGain, contour },
    summary,
  };
}

export default {
  render: makeRender({ name: "trust_region_step", width: 700, height: 360,
                       names: ["delta", "lr", "means", "theta_old", "max_backtracks", "shrink"],
                       title: "The trust region on the simplex of a three-armed bandit: plain, natural and TRPO steps (chapter 2)",
                       draw: drawTrust }),
};
