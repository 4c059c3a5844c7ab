// Live overview: the server pushes the line's state (server-sent events); this fills it in.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const live = document.getElementById("live");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }
  function post(action, label, cls) {
    const form = el("form", { method: "post", action: action });
    form.append(el("input", { type: "hidden", name: "csrf", value: csrf }));
    form.append(el("input", { type: "hidden", name: "back", value: "/hmi/line" }));
    form.append(el("button", cls ? { type: "submit", class: cls } : { type: "submit" }, label));
    return form;
  }
  function pick(data, path) {
    return path.split(".").reduce((v, k) => (v == null ? v : v[k]), data);
  }

  function show(data) {
    for (const node of document.querySelectorAll("[data-field]")) {
      const field = node.dataset.field;
      let value = pick(data, field);
      if (field === "order.lot" && value) value = "lot " + value;
      node.textContent = value == null || value === "" ? (field === "order.id" ? "—" : "") : value;
    }
    document.querySelector(".state").dataset.state = data.state;

    const reasons = document.querySelector("#reasons tbody");
    const rows = Object.entries(data.counters.rejected_by_reason);
    reasons.replaceChildren(...(rows.length ? rows.map(([r, n]) =>
      el("tr", {}, el("td", {}, r), el("td", { class: "num" }, String(n)))) :
      [el("tr", { class: "none" }, el("td", {}, "none"))]));

    const hold = document.getElementById("hold");
    if (data.hold) {
      const p = el("p", { class: "held" }, el("strong", {}, data.hold.reason),
        " since " + data.hold.held_at, el("br"), data.hold.detail);
      hold.replaceChildren(p, post("/hmi/orders/" + encodeURIComponent(data.hold.order_id) +
        "/commands/resume", "Resume", "resume"));
    } else {
      hold.replaceChildren(el("p", { class: "none" }, "not held"));
    }
    const holdForm = document.getElementById("hold-form");
    const running = data.order && data.order.state === "running";
    holdForm.hidden = !running;
    if (running) holdForm.action = "/hmi/orders/" + encodeURIComponent(data.order.id) + "/commands/hold";

    const alarms = document.getElementById("alarms");
    alarms.replaceChildren(...(data.alarms.length ? data.alarms.map((a) => {
      const li = el("li", { class: a.active ? "active" : "cleared" },
        el("span", { class: "kind" }, a.kind), " ", el("span", { class: "msg" }, a.message), " ",
        el("span", { class: "when" }, a.raised_at + (a.count > 1 ? " ×" + a.count : "")));
      li.append(a.acknowledged ? el("span", { class: "ack" }, "acknowledged by " + a.acknowledged_by)
        : post("/hmi/alarms/" + a.id + "/acknowledge", "Acknowledge"));
      return li;
    }) : [el("li", { class: "none" }, "no open alarms")]));

    const devices = document.getElementById("devices");
    devices.replaceChildren(...(data.devices.length ? data.devices.map((d) =>
      el("li", { class: "link " + d.state }, d.name + ": " + d.state)) :
      [el("li", { class: "none" }, "not reported")]));
  }

  const source = new EventSource("/hmi/line/events");
  source.onmessage = (event) => {
    show(JSON.parse(event.data));
    live.textContent = "live";
    live.className = "live";
  };
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live lost";
  };
})();
