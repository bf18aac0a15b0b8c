/* flashgate pages: what the sale page and the dashboard share (taken in inline). */
"use strict";
const FG = (() => {
  const strings = {
    zh: {
      lang_switch: "English", not_found: "没有这场活动",
      sold_out: "已抢光", limit_exceeded: "已达每人限购数量", not_started: "活动尚未开始",
      ended: "活动已结束", paused: "活动已暂停", not_registered: "需先预约才能购买",
      rate_limited: "人太多了，请稍后再试", unavailable: "服务繁忙，请稍后再试",
      unauthenticated: "请先登录", bad_request: "请求有误", not_found_err: "找不到",
      conflict: "状态冲突", idempotency_mismatch: "重复的请求", internal: "服务器出错了",
      network: "网络异常，请重试",
      d: "天", h: "时", m: "分", s: "秒",
    },
    en: {
      lang_switch: "中文", not_found: "No such sale",
      sold_out: "Sold out", limit_exceeded: "You have reached the limit per buyer",
      not_started: "The sale has not started", ended: "The sale has ended",
      paused: "The sale is paused", not_registered: "Register first to buy",
      rate_limited: "Too many requests, try again in a moment",
      unavailable: "Busy, try again in a moment", unauthenticated: "Sign in first",
      bad_request: "Invalid request", not_found_err: "Not found", conflict: "Conflict",
      idempotency_mismatch: "Repeated request", internal: "Server error",
      network: "Network problem, try again",
      d: "d", h: "h", m: "min", s: "s",
    },
  };
  let lang = localStorage.getItem("fg.lang") || document.documentElement.lang || "zh";
  if (!strings[lang]) lang = "zh";
  document.documentElement.lang = lang;
  const onLang = [];
  let offset = 0; // server clock - this device's clock, ms

  function t(key, vars) {
    let s = (strings[lang] && strings[lang][key]) ?? strings.en[key] ?? key;
    if (vars) for (const k in vars) s = s.split("{" + k + "}").join(vars[k]);
    return s;
  }
  return {
    t,
    get lang() { return lang; },
    addStrings(more) { for (const l in more) Object.assign(strings[l] ||= {}, more[l]); },
    setLang(l) {
      lang = l; localStorage.setItem("fg.lang", l); document.documentElement.lang = l;
      onLang.forEach((f) => f());
    },
    onLang(f) { onLang.push(f); },
    /* the server's clock: every page counts down on it, not on the device's */
    sync(serverMs) { if (typeof serverMs === "number") offset = serverMs - Date.now(); },
    now() { return Date.now() + offset; },
    eventId() { return decodeURIComponent(location.pathname.split("/").filter(Boolean).pop()); },
    money(cents) { return "¥" + (cents / 100).toFixed(2); },
    int(n) { return Number(n).toLocaleString(lang === "zh" ? "zh-CN" : "en-US"); },
    /* "1d 02:03:04"-like, in words of the language: 3分12秒 / 3 min 12 s */
    duration(ms) {
      let s = Math.max(0, Math.floor(ms / 1000));
      const d = Math.floor(s / 86400); s -= d * 86400;
      const h = Math.floor(s / 3600); s -= h * 3600;
      const m = Math.floor(s / 60); s -= m * 60;
      const sep = lang === "zh" ? "" : " ";
      const parts = [];
      if (d) parts.push(d + sep + t("d"));
      if (d || h) parts.push(h + sep + t("h"));
      if (d || h || m) parts.push(m + sep + t("m"));
      parts.push(s + sep + t("s"));
      return parts.join(lang === "zh" ? "" : " ");
    },
    /* an API error's words (never the raw object) */
    errorText(status, body) {
      const code = body && typeof body === "object" ? body.error : null;
      if (code === "not_found") return t("not_found_err");
      if (code && (strings[lang][code] || strings.en[code])) return t(code);
      return status ? t("internal") + " (" + status + ")" : t("network");
    },
    /* fetch JSON: {status, body}; status 0 when the network failed */
    async api(method, path, body, token) {
      const headers = {};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (token) headers.Authorization = "Bearer " + token;
      try {
        const r = await fetch(path, { method, headers, cache: "no-store",
          body: body === undefined ? undefined : JSON.stringify(body) });
        let data = null;
        try { data = await r.json(); } catch (e) { data = null; }
        return { status: r.status, body: data };
      } catch (e) {
        return { status: 0, body: null };
      }
    },
    /* the event's stream: handlers by event name (state, stock, order, milestone),
       plus "open" / "error"; EventSource reconnects by itself with Last-Event-ID.
       view false: not a page view of the event (the operator's dashboard) */
    stream(eventId, on, view = true) {
      const es = new EventSource("/api/v1/events/" + encodeURIComponent(eventId) + "/stream"
        + (view ? "" : "?view=0"));
      for (const name of ["state", "stock", "order", "milestone"]) {
        es.addEventListener(name, (e) => {
          let data;
          try { data = JSON.parse(e.data); } catch (err) { return; }
          if (name === "state") FG.sync(data.server_time_ms);
          if (on[name]) on[name](data);
        });
      }
      es.onopen = () => on.open && on.open();
      es.onerror = () => on.error && on.error();
      return es;
    },
    el(tag, attrs, ...children) {
      const e = document.createElement(tag);
      for (const k in attrs || {}) {
        if (k === "class") e.className = attrs[k];
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), attrs[k]);
        else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) e.setAttribute(k, attrs[k]);
      }
      for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
      return e;
    },
  };
})();
