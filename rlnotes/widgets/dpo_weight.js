// Chapter 5: one preference pair (y_w, y_l) in DPO. Implicit rewards r_hat = beta log(pi / pi_ref)
// (rlnotes.dpo.implicit_reward), the loss -log sigma(r_hat(y_w) - r_hat(y_l)) (dpo_loss) and the
// pair's weight in the gradient, sigma(r_hat(y_l) - r_hat(y_w)) (dpo_gradient).

const sigmoid = (z) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));
const logSigmoid = (z) => Math.min(z, 0) - Math.log1p(Math.exp(-Math.abs(z)));

function drawWeight(svg, { beta, chosen_logratio: lw, rejected_logratio: ll }) {
  const chosen = beta * lw, rejected = beta * ll;
  const weight = sigmoid(rejected - chosen), loss = -logSigmoid(chosen - rejected);
  const margin = lw - ll;
  const ms = [];
  for (let i = 0; i <= 200; i++) ms.push(-10 + (20 * i) / 200);
  const left = panel(svg, { x: 60, y: 30, w: 360, h: 240 }, [-10, 10], [0, 1],
                     "log-ratio margin  log π/π_ref (y_w) − log π/π_ref (y_l)", "weight σ(r̂(y_l) − r̂(y_w))");
  const curve = ms.map((m) => [m, sigmoid(-beta * m)]);
  polyline(left.plot, curve.map(([m, w]) => [left.x(m), left.y(w)]), { stroke: "#9467bd", "stroke-width": 2.2 });
  node("line", { x1: left.x(0), x2: left.x(0), y1: left.y(0), y2: left.y(1), stroke: "#aaa", "stroke-dasharray": "3,3" }, left.plot);
  node("circle", { cx: left.x(margin), cy: left.y(weight), r: 6, fill: "#9467bd", "data-name": "weight",
                   "data-value": weight }, left.plot);
  label(left.plot, left.x(-9.5), left.y(0.08), "ranked wrongly: large weight", { fill: "#555" });
  label(left.plot, left.x(9.5), left.y(0.92), "ranked rightly: small weight", { fill: "#555", "text-anchor": "end" });
  const right = panel(svg, { x: 520, y: 30, w: 200, h: 240 }, [0, 2], [-5, 5], "", "implicit reward r̂ = β log π/π_ref",
                      [[0.5, "y_w (chosen)"], [1.5, "y_l (rejected)"]]);
  [[chosen, "#2ca02c", "r_hat(y_w)"], [rejected, "#d62728", "r_hat(y_l)"]].forEach(([v, colour, name], i) => {
    const top = right.y(Math.max(v, 0)), bottom = right.y(Math.min(v, 0));
    node("rect", { x: right.x(i + 0.2), y: top, width: right.x(0.6) - right.x(0), height: bottom - top, fill: colour,
                   "data-name": name, "data-value": v }, right.plot);
    label(right.plot, right.x(i + 0.5), v >= 0 ? top - 4 : bottom + 13, fmt(v, 3), { "text-anchor": "middle" });
  });
  node("line", { x1: right.x(0), x2: right.x(2), y1: right.y(0), y2: right.y(0), stroke: "black" }, right.plot);
  label(svg, 400, 18, `β = ${fmt(beta, 3)}: weight ${fmt(weight, 4)}, loss −log σ(r̂_w − r̂_l) = ${fmt(loss, 4)}`,
        { "text-anchor": "middle", "font-weight": "bold" });
  const summary = `With β = ${fmt(beta, 3)}, log-ratios ${fmt(lw, 2)} for the chosen and ${fmt(ll, 2)} for the rejected ` +
    `response: implicit rewards ${fmt(chosen, 3)} and ${fmt(rejected, 3)}, DPO loss ${fmt(loss, 4)}, gradient weight ` +
    `${fmt(weight, 4)} (${chosen > rejected ? "ranked rightly" : chosen < rejected ? "ranked wrongly" : "a tie"}).`;
  return { values: { beta, chosen_logratio: lw, rejected_logratio: ll, chosen_reward: chosen, rejected_reward: rejected,
                     weight, loss, curve }, summary };
}

export default {
  render: makeRender({ name: "dpo_gradient_weight", width: 760, height: 320,
                       names: ["beta", "chosen_logratio", "rejected_logratio"],
                       title: "A preference pair's implicit rewards and its weight in the DPO gradient (chapter 5)",
                       draw: drawWeight }),
};
