// The demo page: one audio (an uploaded file or a microphone recording) -> the server's OpenAI API
// (verbose_json) -> the text and a timeline of its segments. Plain browser JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLE_RATE = 16000; // recordings are sent as 16 kHz mono 16-bit WAV
let audio = null; // the File to send
let modelId = "speechllama";
let recorder = null;

function status(text) { $("status").textContent = text; }
function fail(text) { $("error").textContent = text; status(""); }

function useAudio(file) {
  audio = file;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("run").disabled = false;
  status(`ready: ${file.name} (${(file.size / 1024).toFixed(0)} kB)`);
}

async function loadServerInfo() {
  const info = await (await fetch("/health")).json();
  modelId = info.model;
  $("model").textContent = info.model;
  $("key-label").hidden = !info.auth;
  for (const [code, name] of Object.entries(info.languages)) {
    const option = document.createElement("option");
    option.value = code;
    option.textContent = `${name} (${code})`;
    $("language").appendChild(option);
  }
}

// A recording (webm/ogg, whatever the browser's MediaRecorder makes) -> 16 kHz mono WAV, which the
// server decodes whatever the browser; the browser decodes its own recording format.
async function toWav(blob) {
  const decoded = await new AudioContext().decodeAudioData(await blob.arrayBuffer());
  const frames = Math.ceil(decoded.duration * SAMPLE_RATE);
  const offline = new OfflineAudioContext(1, frames, SAMPLE_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const samples = (await offline.startRendering()).getChannelData(0);
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * samples.length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, SAMPLE_RATE, true); view.setUint32(28, 2 * SAMPLE_RATE, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * samples.length, true);
  samples.forEach((x, i) => view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, x)) * 32767, true));
  return new File([view], "recording.wav", { type: "audio/wav" });
}

async function toggleRecording() {
  if (recorder) { recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      recorder = null;
      $("record").textContent = "Record";
      useAudio(await toWav(new Blob(chunks, { type: chunks[0]?.type })));
    };
    recorder.start();
    $("record").textContent = "Stop";
    status("recording...");
  } catch (e) {
    fail(`cannot record: ${e.message}`);
  }
}

function clock(seconds) {
  const m = Math.floor(seconds / 60);
  return `${m}:${(seconds - 60 * m).toFixed(2).padStart(5, "0")}`;
}

function showResult(result) {
  $("transcript").textContent = result.text;
  const timeline = $("timeline"), table = $("segments");
  timeline.replaceChildren();
  table.replaceChildren();
  for (const seg of result.segments || []) {
    const block = document.createElement("div");
    block.className = "seg";
    block.style.left = `${(100 * seg.start) / result.duration}%`;
    block.style.width = `${(100 * (seg.end - seg.start)) / result.duration}%`;
    block.title = `${clock(seg.start)}-${clock(seg.end)} ${seg.text}`;
    block.textContent = seg.text;
    timeline.appendChild(block);
    const row = table.insertRow();
    row.insertCell().textContent = `${clock(seg.start)} - ${clock(seg.end)}`;
    row.cells[0].className = "time";
    row.insertCell().textContent = seg.text;
  }
}

async function run() {
  const form = new FormData();
  form.append("file", audio);
  form.append("model", modelId);
  form.append("response_format", "verbose_json");
  if ($("language").value) form.append("language", $("language").value);
  const task = document.querySelector("input[name=task]:checked").value;
  const headers = $("api-key").value ? { Authorization: `Bearer ${$("api-key").value}` } : {};
  $("error").textContent = "";
  $("run").disabled = true;
  status("decoding...");
  const started = performance.now();
  try {
    const response = await fetch(`/v1/audio/${task}`, { method: "POST", body: form, headers });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    showResult(body);
    status(`${body.duration.toFixed(1)} s of audio in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  } catch (e) {
    fail(e.message);
  } finally {
    $("run").disabled = false;
  }
}

$("file").addEventListener("change", (e) => e.target.files[0] && useAudio(e.target.files[0]));
$("record").addEventListener("click", toggleRecording);
$("run").addEventListener("click", run);
loadServerInfo().catch((e) => fail(`cannot reach the server: ${e.message}`));
