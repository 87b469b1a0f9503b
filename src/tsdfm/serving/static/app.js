// The page: POST /v1/completions with stream=true, read the server-sent events, and redraw the
// sequence after every step (masked slots grey, tokens committed in this step highlighted).
"use strict";
const $ = (id) => document.getElementById(id);
const MASK = "\u25ab";

fetch("/v1/models").then((r) => r.json()).then((m) => {
  const card = m.data[0];
  $("model-name").textContent = `${card.id} (${card.tsdfm.kind}, ${card.tsdfm.source} source, L = ${card.tsdfm.max_len})`;
}).catch(() => {});

$("steps").addEventListener("input", () => { $("steps-out").textContent = $("steps").value; });

function drawSequence(choice, fixedMask) {
  const seq = $("sequence");
  seq.textContent = "";
  const changed = new Set(choice.changed);
  choice.tokens.forEach((piece, i) => {
    const span = document.createElement("span");
    span.className = "tok";
    if (piece === null) { span.classList.add("masked"); span.textContent = MASK; }
    else {
      span.textContent = piece;
      if (fixedMask[i]) span.classList.add("fixed");
      else if (changed.has(i)) span.classList.add("new");
    }
    seq.appendChild(span);
  });
}

function logStep(ev, choice) {
  const li = document.createElement("li");
  li.className = ev.step === 0 ? "start" : "step";
  const ms = ev.step_ms === null || ev.step === 0 ? "" : `${ev.step_ms.toFixed(1)} ms`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `step ${ev.step}/${ev.steps}  ${ms}  ${choice.changed.length} changed, ${choice.masked} masked  `;
  li.appendChild(meta);
  li.appendChild(document.createTextNode(choice.state));
  $("steps-log").appendChild(li);
}

async function run(body) {
  const resp = await fetch("/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({ error: { message: resp.statusText } }));
    throw new Error(err.error.message);
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", fixedMask = null, last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      if (line === "[DONE]") return last;
      const ev = JSON.parse(line);
      if (ev.error) throw new Error(ev.error.message);
      const choice = ev.choices[0];
      if (fixedMask === null) {
        const given = new Set(ev.fixed || []);
        fixedMask = choice.tokens.map((_, i) => given.has(i));
      }
      drawSequence(choice, fixedMask);
      logStep(ev, choice);
      $("step-label").textContent = `after step ${ev.step} of ${ev.steps}`;
      last = ev;
    }
  }
  return last;
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const mode = document.querySelector("input[name=mode]:checked").value;
  const text = $("text").value;
  const body = { steps: Number($("steps").value), temperature: Number($("temperature").value),
    n: 1, stream: true, echo: true };
  body[mode] = text;
  if ($("max-tokens").value) body.max_tokens = Number($("max-tokens").value);
  if ($("seed").value) body.seed = Number($("seed").value);
  $("steps-log").textContent = ""; $("final").textContent = ""; $("status").textContent = "sampling...";
  $("status").classList.remove("error"); $("go").disabled = true;
  const t0 = performance.now();
  try {
    const last = await run(body);
    $("final").textContent = last.choices[0].text;
    $("status").textContent = `done: ${last.steps} steps in ${(performance.now() - t0).toFixed(0)} ms (seed ${body.seed ?? "random"})`;
  } catch (err) {
    $("status").textContent = `error: ${err.message}`; $("status").classList.add("error");
  } finally { $("go").disabled = false; }
});
