// The nurse console's browser side: live queue and conversation over one websocket, actions over fetch.
// No inline scripts (the Content-Security-Policy forbids them); every POST carries the CSRF token.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function notice(text, isError) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = isError ? "error" : "info";
  box.hidden = !text;
}

async function post(url, data) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(data || {}),
    credentials: "same-origin",
  });
  let body = {};
  try { body = await response.json(); } catch (e) { body = { error: await response.text().catch(() => "") }; }
  if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname); }
  return { status: response.status, body };
}

function connect(onOpen, onMessage) {
  let delay = 500;
  const open = () => {
    const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    socket.onopen = () => { delay = 500; onOpen(socket); };
    socket.onmessage = (event) => onMessage(JSON.parse(event.data));
    socket.onclose = () => { setTimeout(open, delay); delay = Math.min(delay * 2, 10000); };
  };
  open();
}

const AUTHORS = { patient: "患者", bot: "机器人", nurse: "护士", system: "系统" };

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function localTime(iso) {
  // the hospital's time zone, as the server renders times, whatever the browser's own zone
  const parts = new Intl.DateTimeFormat("en-GB", {
    timeZone: document.body.dataset.tz || undefined, month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  }).formatToParts(new Date(iso));
  const part = (type) => (parts.find((p) => p.type === type) || {}).value;
  return part("month") + "-" + part("day") + " " + part("hour") + ":" + part("minute");
}

async function claim(id) {
  const { status, body } = await post("/escalations/" + id + "/claim");
  if (status === 200) {
    // e.g. the bot could not be paused: shown on the conversation page the nurse lands on
    if (body.warning) sessionStorage.setItem("notice", body.warning);
    window.location = "/escalations/" + id;
    return;
  }
  notice(status === 409 ? "已被 " + (body.holder || "其他护士") + " 接手" : "接手失败：" + (body.error || status), true);
}

function queuePage() {
  const table = document.getElementById("queue");
  const department = table.dataset.department;
  const tbody = table.querySelector("tbody");
  const seen = new Set([...tbody.querySelectorAll("tr")].map((tr) => tr.dataset.id));
  const render = (items) => {
    const shown = items.filter((item) => !department || item.department === department);
    tbody.replaceChildren(...shown.map((item) => {
      const tr = el("tr", "p" + item.priority + (item.overdue ? " overdue" : "") + (seen.has(String(item.id)) ? "" : " new"));
      tr.dataset.id = item.id;
      const badge = el("span", "badge p" + item.priority, "P" + item.priority);
      const first = el("td"); first.append(badge); tr.append(first);
      tr.append(el("td", "", item.reason_name), el("td", "", item.waiting_minutes + " 分钟"), el("td", "", item.channel_name),
        el("td", "", item.department_name), el("td", "summary", item.summary),
        el("td", "status", item.claimed_by ? item.claimed_by + " 处理中" : "待接手"));
      const last = el("td");
      if (!item.claimed_by) {
        const button = el("button", "claim", "接手"); button.dataset.id = item.id; last.append(button);
      }
      const link = el("a", "", "查看"); link.href = "/escalations/" + item.id; last.append(" ", link);
      tr.append(last);
      return tr;
    }));
    shown.forEach((item) => seen.add(String(item.id)));
    document.getElementById("count").textContent = shown.length;
    document.getElementById("empty").hidden = shown.length > 0;
  };
  tbody.addEventListener("click", (event) => {
    if (event.target.classList.contains("claim")) claim(event.target.dataset.id);
  });
  connect(() => {}, (message) => { if (message.type === "queue") render(message.items); });
}

function conversationPage() {
  const root = document.getElementById("conversation");
  const id = root.dataset.escalationId;
  const list = document.getElementById("turns");
  let lastId = Number(root.dataset.lastId);
  const scroll = () => { list.scrollTop = list.scrollHeight; };
  const append = (turn) => {
    if (turn.id <= lastId) return;
    lastId = turn.id;
    const li = el("li", "turn " + turn.author);
    li.dataset.id = turn.id;
    const who = turn.author === "nurse" ? "护士 " + (turn.nurse || "") : AUTHORS[turn.author];
    const text = turn.author === "system" ? (turn.text === "paused" ? "机器人已暂停" : "机器人已恢复") : turn.text;
    li.append(el("span", "meta", who + " · " + localTime(turn.at)), el("span", "text", text));
    if (turn.choices && turn.choices.length) li.append(el("span", "choices", turn.choices.join(" / ")));
    list.append(li);
    scroll();
  };
  scroll();
  connect((socket) => socket.send(JSON.stringify({ watch: Number(id), after: lastId })), (message) => {
    if (message.type === "turn") append(message.turn);
  });
  const claimButton = document.getElementById("claim");
  if (claimButton) claimButton.addEventListener("click", () => claim(id));
  const reply = document.getElementById("reply");
  if (reply) {
    const box = document.getElementById("reply-text");
    document.querySelectorAll(".canned-reply").forEach((button) =>
      button.addEventListener("click", () => { box.value = button.dataset.text; box.focus(); }));
    reply.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = box.value.trim();
      if (!text) return;
      const send = document.getElementById("send");
      send.disabled = true;
      const { status, body } = await post("/escalations/" + id + "/reply", { text });
      send.disabled = false;
      if (status === 200 && body.sent) {
        box.value = "";
        notice(body.warning || "已发送（" + body.delivery.channel + "）", Boolean(body.warning));
      } else {
        notice(body.error || "发送失败（" + status + "）", true);
      }
    });
  }
  const resolve = document.getElementById("resolve");
  if (resolve) {
    resolve.addEventListener("submit", async (event) => {
      event.preventDefault();
      const { status, body } = await post("/escalations/" + id + "/resolve", {
        resolution: document.getElementById("resolution").value,
        offer_survey: document.getElementById("offer-survey").checked,
      });
      if (status === 200) { window.location = "/"; } else { notice(body.error || "操作失败（" + status + "）", true); }
    });
    document.getElementById("release").addEventListener("click", async () => {
      const { status } = await post("/escalations/" + id + "/release");
      if (status === 200) window.location = "/";
    });
  }
  const tag = document.getElementById("tag");
  if (tag) {
    tag.addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = tag.querySelector("input");
      const { status } = await post("/patients/" + tag.dataset.patient + "/tags", { tag: input.value });
      if (status === 200) window.location.reload();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-autosubmit]").forEach((select) =>
    select.addEventListener("change", () => select.form.submit()));
  const carried = sessionStorage.getItem("notice");
  if (carried) { sessionStorage.removeItem("notice"); notice(carried, true); }
  const page = document.body.dataset.page;
  if (page === "queue") queuePage();
  if (page === "conversation") conversationPage();
});
