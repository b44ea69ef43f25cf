// Portico's live dashboard: plain JavaScript, no build step, no dependencies.
//
// Every second it reads /metrics (public: totals, latency histograms, workers) and, with the
// admin token when one is needed, /api/pools and /api/listeners (servers, their state and
// counters), /api/bans and /api/access (bans and run-time access entries, each with a button
// that lifts or removes it). Rates are computed here from successive counter readings over a
// short window; the page keeps only the last minute of readings. The token is asked for once, or read from
// the URL fragment (#token=...), and kept in sessionStorage: it is sent only as an
// Authorization header, never in a URL.
"use strict";

(() => {
  const POLL_MS = 1000;
  const RATE_WINDOW = 3; // seconds of readings a rate is computed over
  // ... and at least this many: workers report once a second, so a rate over less than that
  // reads a whole second's requests in a fraction of one
  const MIN_SPAN = 1.5;
  const HISTORY = 60; // readings kept (sparklines show this many)
  const TOKEN_KEY = "portico.admin-token";
  const KEY_SEP = "\u0000";

  const $ = (selector, root = document) => root.querySelector(selector);

  // -- state ----------------------------------------------------------------------------------

  const page = {
    needsToken: false, // the API refused us: stop asking it until a token is given
    samples: [], // readings, oldest first: see `takeSample`
    pools: new Map(), // pool name -> its <section>, with `.rows`: server name -> <tr>
    sparks: new Map(), // pool name -> recent req/s values
    lastMutation: 0, // performance.now() when a state change was last answered
    workers: 0,
    fleet: undefined, // false once the API said there is no fleet (no state.redis)
  };

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && body.detail ? body.detail : `the admin API answered ${status}`;
      super(body && body.error ? `${body.error}: ${detail}` : detail);
      this.status = status;
      this.body = body;
    }
  }

  // -- the token ------------------------------------------------------------------------------

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage disabled: the token lives as long as this page then
    }
    memoryToken = token;
  }

  let memoryToken = "";

  function token() {
    return storedToken() || memoryToken;
  }

  /** Take #token=... from the URL into sessionStorage and drop it from the address bar. */
  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has("token")) return;
    storeToken(params.get("token") || "");
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }

  function showTokenForm(reason) {
    const form = $("#token-form");
    const refused = reason && reason.status === 403 && token();
    $("#token-title").textContent = refused
      ? "That token was refused by this Portico."
      : "This Portico's admin API needs a token.";
    form.dataset.kind = refused ? "error" : "info";
    $("#token-forget").hidden = !token();
    form.hidden = false;
    $("#token-input").focus();
  }

  /** The API refused `used` (the token a request was sent with): ask for another one, unless
   * a new token came while the request was on its way. */
  function askForToken(error, used) {
    if (used !== token()) return;
    page.needsToken = true;
    setStatus("token", error.status === 403 && token() ? "token refused" : "token needed");
    showTokenForm(error);
  }

  function wireTokenForm() {
    const form = $("#token-form");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#token-input").value.trim();
      if (!value) return;
      storeToken(value);
      $("#token-input").value = "";
      form.hidden = true;
      page.needsToken = false;
      $("#token-toggle").hidden = false;
      refresh();
    });
    $("#token-forget").addEventListener("click", () => {
      storeToken("");
      $("#token-forget").hidden = true;
      $("#token-toggle").hidden = true;
    });
    $("#token-toggle").addEventListener("click", () => {
      if (form.hidden) showTokenForm(null);
      else form.hidden = true;
    });
  }

  // -- talking to the admin listener ----------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const current = token();
    if (current) headers.Authorization = `Bearer ${current}`;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  async function metricsText() {
    const response = await fetch("/metrics", { cache: "no-store", credentials: "omit" });
    if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
    return response.text();
  }

  /** Prometheus' text format -> Map(name -> [{labels, value}]). */
  function parseMetrics(text) {
    const out = new Map();
    const line = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /(\w+)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      if (!raw || raw[0] === "#") continue;
      const found = line.exec(raw);
      if (!found) continue;
      const labels = {};
      for (const [, name, value] of (found[2] || "").matchAll(label)) {
        labels[name] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
      if (!out.has(found[1])) out.set(found[1], []);
      out.get(found[1]).push({ labels, value: Number(found[3]) });
    }
    return out;
  }

  // -- readings and rates ---------------------------------------------------------------------

  function sum(samples, keep = () => true) {
    return (samples || []).reduce((total, s) => (keep(s.labels) ? total + s.value : total), 0);
  }

  /** Latency histograms by pool ("" for all pools together): {bounds, cumulative, sum, count}. */
  function histograms(metrics) {
    const out = new Map();
    const add = (pool, bound, value) => {
      if (!out.has(pool)) out.set(pool, { buckets: new Map(), sum: 0, count: 0 });
      const h = out.get(pool);
      h.buckets.set(bound, (h.buckets.get(bound) || 0) + value);
    };
    for (const s of metrics.get("portico_request_duration_seconds_bucket") || []) {
      const bound = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      add("", bound, s.value);
      if (s.labels.pool) add(s.labels.pool, bound, s.value);
    }
    for (const [suffix, field] of [["_sum", "sum"], ["_count", "count"]]) {
      for (const s of metrics.get(`portico_request_duration_seconds${suffix}`) || []) {
        for (const pool of s.labels.pool ? ["", s.labels.pool] : [""]) {
          if (out.has(pool)) out.get(pool)[field] += s.value;
        }
      }
    }
    return out;
  }

  function takeSample(metrics, pools, listeners) {
    const requests = metrics.get("portico_requests_total");
    const sample = {
      t: performance.now() / 1000,
      requests: sum(requests),
      errors: sum(requests, (l) => l.code_class === "5xx"),
      bytesIn: sum(metrics.get("portico_client_received_bytes_total")),
      bytesOut: sum(metrics.get("portico_client_sent_bytes_total")),
      connections: sum(metrics.get("portico_active_connections")),
      latency: histograms(metrics),
      servers: new Map(),
      listeners: new Map(),
    };
    for (const pool of pools || []) {
      for (const server of pool.servers) {
        sample.servers.set(pool.name + KEY_SEP + server.name, {
          requests: server.requests,
          errors: server.responses["5xx"] || 0,
        });
      }
    }
    for (const listener of listeners || []) {
      sample.listeners.set(listener.name, {
        requests: Object.values(listener.responses).reduce((a, b) => a + b, 0),
        bytesIn: listener.bytes_received,
        bytesOut: listener.bytes_sent,
      });
    }
    page.samples.push(sample);
    if (page.samples.length > HISTORY + RATE_WINDOW + 2) page.samples.shift();
    return sample;
  }

  /** The reading to compute rates against: the newest one at least RATE_WINDOW seconds old,
   * else the oldest if it is at least MIN_SPAN old; else null (rates not known yet). */
  function baseline() {
    const samples = page.samples;
    if (samples.length < 2) return null;
    const now = samples[samples.length - 1].t;
    for (let i = samples.length - 2; i >= 0; i--) {
      if (now - samples[i].t >= RATE_WINDOW) return samples[i];
    }
    return now - samples[0].t >= MIN_SPAN ? samples[0] : null;
  }

  /** Per second, from `before` to `after` over `seconds`; null if unknown. A counter that went
   * down (a server removed and added again) counts from zero. */
  function rate(after, before, seconds) {
    if (after === undefined || before === undefined || !(seconds > 0)) return null;
    return Math.max(0, after - before) / seconds;
  }

  /** A quantile of the requests between two readings of a histogram, interpolated inside its
   * bucket as Prometheus' histogram_quantile does: {seconds, below} (below: in the first
   * bucket, so only "under its bound" is known); null without requests. */
  function quantile(q, after, before) {
    if (!after) return null;
    const bounds = [...after.buckets.keys()].sort((a, b) => a - b);
    const counts = bounds.map(
      (b) => after.buckets.get(b) - ((before && before.buckets.get(b)) || 0),
    );
    const total = counts[counts.length - 1];
    if (!(total > 0)) return null;
    const rank = q * total;
    for (let i = 0; i < bounds.length; i++) {
      if (counts[i] >= rank) {
        if (i === 0) return { seconds: bounds[0], below: true };
        if (bounds[i] === Infinity) return { seconds: bounds[i - 1], above: true };
        const inside = counts[i] - counts[i - 1];
        const fraction = inside > 0 ? (rank - counts[i - 1]) / inside : 1;
        return { seconds: bounds[i - 1] + (bounds[i] - bounds[i - 1]) * fraction };
      }
    }
    return null;
  }

  function meanLatency(after, before) {
    if (!after) return null;
    const count = after.count - ((before && before.count) || 0);
    if (!(count > 0)) return null;
    return (after.sum - ((before && before.sum) || 0)) / count;
  }

  // -- formatting -----------------------------------------------------------------------------

  function formatRate(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0";
    if (value < 10) return value.toFixed(1);
    if (value < 10000) return Math.round(value).toLocaleString("en");
    return `${(value / 1000).toFixed(1)}k`;
  }

  function formatSeconds(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const ms = seconds * 1000;
    if (ms < 1) return `${Math.round(ms * 1000)} µs`;
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  }

  /** A bucket bound as written in the list of buckets: 250 µs, 5 ms, 2.5 s. */
  function formatBound(seconds) {
    if (seconds < 0.001) return `${+(seconds * 1e6).toFixed(1)} µs`;
    return seconds < 1 ? `${+(seconds * 1000).toFixed(3)} ms` : `${+seconds.toFixed(3)} s`;
  }

  function formatQuantile(found) {
    if (!found) return "–";
    if (found.below) return `< ${formatBound(found.seconds)}`;
    if (found.above) return `> ${formatBound(found.seconds)}`;
    return formatSeconds(found.seconds);
  }

  function formatBytes(perSecond) {
    if (perSecond === null || perSecond === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let value = perSecond;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value < 10 && unit ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
  }

  function formatCount(value) {
    return Number(value || 0).toLocaleString("en");
  }

  function setText(element, text, value) {
    if (element.textContent !== text) element.textContent = text;
    if (value !== undefined) element.dataset.value = value === null ? "" : String(value);
  }

  function field(root, name) {
    return root.querySelector(`[data-field="${name}"]`);
  }

  // -- the status line and messages -----------------------------------------------------------

  function setStatus(kind, text) {
    const status = $("#status");
    status.dataset.state = kind;
    setText($("#status-text"), text);
  }

  let toastTimer = 0;
  function toast(message, kind = "info") {
    const element = $("#toast");
    element.textContent = message;
    element.dataset.kind = kind;
    element.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (element.hidden = true), kind === "error" ? 8000 : 3500);
  }

  // -- rendering ------------------------------------------------------------------------------

  function renderTotals(now, before, seconds, pools) {
    const requests = before ? rate(now.requests, before.requests, seconds) : null;
    const errors = before ? rate(now.errors, before.errors, seconds) : null;
    setText($("#total-rate"), formatRate(requests), requests ?? 0);
    setText($("#total-requests"), `${formatCount(now.requests)} requests in all`);
    const all = now.latency.get("");
    const old = before && before.latency.get("");
    if (before) {
      const mean = meanLatency(all, old);
      setText($("#total-latency"), formatSeconds(mean));
      const p50 = formatQuantile(quantile(0.5, all, old));
      const p99 = formatQuantile(quantile(0.99, all, old));
      setText($("#total-quantiles"), mean === null ? "no requests lately" : `p50 ${p50} · p99 ${p99}`);
    }
    setText($("#total-errors"), formatRate(errors), errors ?? 0);
    setText(
      $("#total-error-share"),
      requests ? `${((100 * errors) / requests).toFixed(1)}% of requests` : `${formatCount(now.errors)} in all`,
    );
    const inRate = before ? rate(now.bytesIn, before.bytesIn, seconds) : null;
    const outRate = before ? rate(now.bytesOut, before.bytesOut, seconds) : null;
    setText($("#total-connections"), formatCount(now.connections));
    setText($("#total-bandwidth"), `in ${formatBytes(inRate)}/s · out ${formatBytes(outRate)}/s`);
    setText($("#total-workers"), `${page.workers} worker${page.workers === 1 ? "" : "s"}`);
    if (pools) {
      const servers = pools.flatMap((p) => p.servers);
      const serving = servers.filter((s) => inRotation(s)).length;
      setText($("#total-up"), `${serving} / ${servers.length}`);
      $("#total-up").dataset.level =
        serving === servers.length ? "ok" : serving === 0 ? "bad" : "warn";
    }
  }

  function inRotation(server) {
    return (
      server.state === "ready" && server.health.active !== "down" && server.health.ejected_by === 0
    );
  }

  /** The health chip: what active and passive checks say, with the detail as a tooltip. */
  function healthOf(server) {
    const h = server.health;
    if (h.active === "down") return { kind: "bad", text: "down", title: h.detail };
    if (h.ejected_by > 0) {
      const of = page.workers > 1 ? ` by ${h.ejected_by} of ${page.workers} workers` : "";
      return { kind: "warn", text: "ejected", title: `ejected by passive health checks${of}` };
    }
    if (h.active === "up") return { kind: "ok", text: "up", title: h.detail };
    return {
      kind: "ok-quiet",
      text: "up",
      title: "no active health checks; passive checks have not ejected it",
    };
  }

  function poolSection(pool) {
    let section = page.pools.get(pool.name);
    if (!section) {
      section = $("#pool-template").content.firstElementChild.cloneNode(true);
      section.dataset.pool = pool.name;
      section.rows = new Map();
      setText(field(section, "name"), pool.name);
      page.pools.set(pool.name, section);
    }
    return section;
  }

  function serverRow(section, pool, server) {
    let row = section.rows.get(server.name);
    if (!row) {
      row = $("#server-template").content.firstElementChild.cloneNode(true);
      row.dataset.pool = pool.name;
      row.dataset.server = server.name;
      setText(field(row, "name"), server.name);
      section.rows.set(server.name, row);
    }
    return row;
  }

  /** Put `children` into `parent` in this order, moving only what is out of place, and
   * remove any other element child (a pool or server that is gone). */
  function place(parent, children) {
    children.forEach((child, index) => {
      if (parent.children[index] !== child) parent.insertBefore(child, parent.children[index] || null);
    });
    while (parent.children.length > children.length) parent.lastElementChild.remove();
  }

  function showState(row, state) {
    row.dataset.state = state;
    for (const button of row.querySelectorAll(".segmented button")) {
      const current = button.dataset.state === state;
      button.setAttribute("aria-pressed", String(current));
    }
  }

  function renderServer(row, server, rates, showStates) {
    setText(field(row, "address"), server.address);
    setText(field(row, "weight"), String(server.weight));
    const health = healthOf(server);
    const cell = field(row, "health");
    let chip = cell.firstElementChild;
    if (!chip) chip = cell.appendChild(document.createElement("span"));
    chip.className = `chip ${health.kind}`;
    setText(chip, health.text);
    chip.title = health.title;
    row.dataset.health = health.text;
    row.classList.toggle("out", !inRotation(server));
    setText(field(row, "rate"), formatRate(rates.rate), rates.rate ?? 0);
    const share = rates.share;
    setText(field(row, "share"), share === null ? "–" : `${Math.round(share * 100)}%`, share ?? 0);
    field(row, "share-bar").style.width = `${share === null ? 0 : Math.max(0, share * 100)}%`;
    setText(field(row, "in_flight"), formatCount(server.in_flight));
    setText(field(row, "errors"), formatRate(rates.errors), rates.errors ?? 0);
    const failures = field(row, "failures");
    setText(failures, formatCount(server.failures));
    failures.title = `${formatCount(server.failures)} failed requests, ${formatCount(server.ejections)} ejections`;
    if (showStates || !row.dataset.state) showState(row, server.state);
  }

  function renderSpark(section, values) {
    const svg = field(section, "spark");
    const width = 120;
    const height = 32;
    const peak = Math.max(...values);
    const max = Math.max(1, peak * 1.2);
    const step = width / (HISTORY - 1);
    const offset = (HISTORY - values.length) * step;
    const points = values.map((v, i) => [offset + i * step, height - 1 - (v / max) * (height - 4)]);
    if (points.length < 2) return;
    const line = points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
    svg.querySelector(".spark-line").setAttribute("d", line);
    const first = points[0][0].toFixed(1);
    svg.querySelector(".spark-area").setAttribute("d", `${line}L${width},${height}L${first},${height}Z`);
    svg.setAttribute("aria-label", `Requests per second, last minute: now ${formatRate(values[values.length - 1])}, peak ${formatRate(peak)}`);
  }

  function renderPools(pools, now, before, seconds, showStates) {
    const sections = pools.map((pool) => {
      const section = poolSection(pool);
      setText(field(section, "policy"), pool.policy.replaceAll("_", " "));
      const serving = pool.servers.filter(inRotation).length;
      const up = field(section, "up");
      setText(up, `${serving} of ${pool.servers.length} in rotation`);
      up.dataset.level = serving === pool.servers.length ? "ok" : serving === 0 ? "bad" : "warn";

      const perServer = pool.servers.map((server) => {
        const key = pool.name + KEY_SEP + server.name;
        const a = now.servers.get(key);
        const b = before && before.servers.get(key);
        return {
          rate: b ? rate(a.requests, b.requests, seconds) : null,
          errors: b ? rate(a.errors, b.errors, seconds) : null,
        };
      });
      const total = perServer.reduce((t, r) => t + (r.rate || 0), 0);
      const known = perServer.some((r) => r.rate !== null);
      const rows = pool.servers.map((server, i) => {
        const row = serverRow(section, pool, server);
        const share = known && total > 0 ? (perServer[i].rate || 0) / total : null;
        renderServer(row, server, { ...perServer[i], share }, showStates);
        return row;
      });
      for (const name of [...section.rows.keys()]) {
        if (!pool.servers.some((s) => s.name === name)) section.rows.delete(name);
      }
      place(section.querySelector("tbody"), rows);

      setText(field(section, "rate"), known ? formatRate(total) : "–", known ? total : 0);
      const h = now.latency.get(pool.name);
      const old = before && before.latency.get(pool.name);
      setText(field(section, "p50"), before ? formatQuantile(quantile(0.5, h, old)) : "–");
      setText(field(section, "p99"), before ? formatQuantile(quantile(0.99, h, old)) : "–");
      setText(field(section, "mean"), before ? formatSeconds(meanLatency(h, old)) : "–");
      setText(field(section, "queue"), formatCount(pool.queue_length));
      setText(field(section, "retries"), formatCount(pool.retries));
      if (known) {
        const spark = page.sparks.get(pool.name) || [];
        spark.push(total);
        if (spark.length > HISTORY) spark.shift();
        page.sparks.set(pool.name, spark);
        renderSpark(section, spark);
      }
      return section;
    });
    for (const name of [...page.pools.keys()]) {
      if (!pools.some((p) => p.name === name)) {
        page.pools.delete(name);
        page.sparks.delete(name);
      }
    }
    place($("#pools"), sections);
  }

  function renderListeners(listeners, now, before, seconds) {
    const body = $("#listeners");
    $("#listeners-card").hidden = listeners.length === 0;
    const rows = listeners.map((listener) => {
      let row = body.querySelector(`tr[data-listener="${CSS.escape(listener.name)}"]`);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.listener = listener.name;
        row.innerHTML =
          '<td class="server-name"><span class="name"></span><span class="address"></span></td>' +
          '<td class="mono"></td><td></td><td class="num"></td><td class="num"></td>' +
          '<td class="num"></td><td class="num"></td><td class="num"></td>';
      }
      const a = now.listeners.get(listener.name);
      const b = before && before.listeners.get(listener.name);
      const cells = row.children;
      setText(cells[0].firstElementChild, listener.name);
      setText(cells[0].lastElementChild, listener.protocol);
      setText(cells[1], listener.address);
      setText(cells[2], listener.default_pool);
      setText(cells[3], formatRate(b ? rate(a.requests, b.requests, seconds) : null));
      setText(cells[4], formatCount(listener.active_connections));
      setText(cells[5], b ? `${formatBytes(rate(a.bytesIn, b.bytesIn, seconds))}` : "–");
      setText(cells[6], b ? `${formatBytes(rate(a.bytesOut, b.bytesOut, seconds))}` : "–");
      setText(cells[7], formatCount(listener.ratelimited));
      return row;
    });
    place(body, rows);
  }

  /** The HTTP cache per route (listener/route), from the cache counters since the start:
   * hit ratio = hits / (hits + misses); hidden while no route caches. */
  function renderCache(metrics) {
    const routes = new Map();
    const names = {
      hits: "portico_cache_hits_total",
      misses: "portico_cache_misses_total",
      stale: "portico_cache_stale_total",
      revalidations: "portico_cache_revalidations_total",
      stored: "portico_cache_stored_total",
    };
    for (const [field, metric] of Object.entries(names)) {
      for (const s of metrics.get(metric) || []) {
        const key = `${s.labels.listener}/${s.labels.route}`;
        if (!routes.has(key)) routes.set(key, {});
        routes.get(key)[field] = (routes.get(key)[field] || 0) + s.value;
      }
    }
    $("#cache-card").hidden = routes.size === 0;
    const body = $("#cache-routes");
    const rows = [...routes.entries()].map(([key, c]) => {
      let row = body.querySelector(`tr[data-route="${CSS.escape(key)}"]`);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.route = key;
        row.innerHTML =
          '<td class="mono"></td><td class="num"></td><td class="num"></td><td class="num"></td>' +
          '<td class="num"></td><td class="num"></td><td class="num"></td>';
      }
      const hits = c.hits || 0;
      const looked = hits + (c.misses || 0);
      const cells = row.children;
      setText(cells[0], key);
      setText(cells[1], looked ? `${((100 * hits) / looked).toFixed(1)}%` : "–");
      setText(cells[2], formatCount(hits));
      setText(cells[3], formatCount(c.misses || 0));
      setText(cells[4], formatCount(c.stale || 0));
      setText(cells[5], formatCount(c.revalidations || 0));
      setText(cells[6], formatCount(c.stored || 0));
      return row;
    });
    place(body, rows);
    const bytes = sum(metrics.get("portico_cache_bytes"));
    const entries = sum(metrics.get("portico_cache_entries"));
    setText($("#cache-size"), `responses stored: ${formatCount(entries)} · memory: ${formatSize(bytes)}`);
  }

  function formatSize(bytes) {
    if (bytes >= 1 << 30) return `${(bytes / (1 << 30)).toFixed(1)} GiB`;
    if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
    if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
    return `${bytes} B`;
  }

  // -- the poll loop --------------------------------------------------------------------------

  let refreshing = null;

  /** One reading of everything, rendered; concurrent calls share one. */
  function refresh() {
    if (!refreshing) refreshing = readAndRender().finally(() => (refreshing = null));
    return refreshing;
  }

  async function readAndRender() {
    const started = performance.now();
    const used = token();
    const metricsPromise = metricsText();
    let pools = null;
    let listeners = null;
    let failure = null;
    if (!page.needsToken) {
      try {
        [pools, listeners] = await Promise.all([api("GET", "/api/pools"), api("GET", "/api/listeners")]);
      } catch (error) {
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
          askForToken(error, used);
        } else {
          failure = error;
        }
      }
    }
    let metrics;
    try {
      metrics = parseMetrics(await metricsPromise);
    } catch (error) {
      failure = failure || error;
    }
    if (!metrics) {
      setStatus("offline", `offline: ${failure ? failure.message : "no answer"}`);
      return;
    }
    page.workers = sum(metrics.get("portico_workers"));
    const now = takeSample(metrics, pools, listeners);
    const before = baseline();
    const seconds = before ? now.t - before.t : 0;
    // a reading that started before a state change was answered may predate it
    const showStates = started >= page.lastMutation;
    renderTotals(now, before, seconds, pools);
    if (pools) renderPools(pools, now, before, seconds, showStates);
    if (listeners) renderListeners(listeners, now, before, seconds);
    renderCache(metrics);
    if (!page.needsToken) await refreshSecurity(metrics);
    if (!page.needsToken && page.fleet !== false) await refreshFleet();
    if (failure) setStatus("offline", `admin API: ${failure.message}`);
    else if (!page.needsToken) {
      const time = new Date().toLocaleTimeString("en-GB", { hour12: false });
      setStatus("live", `live · ${time}`);
    }
  }

  // -- bans and run-time access entries -------------------------------------------------------

  /** "1h 02m", "4m 05s", "12s"; "never" for an entry without a TTL. */
  function formatLeft(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const s = Math.max(0, Math.round(seconds));
    if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${s}s`;
  }

  /** A keyed row of `body` (made with `cells` empty cells and a remove button), reused across
   * readings so that a click never lands on a row being replaced. */
  function keyedRow(body, key, cells, label) {
    let row = [...body.children].find((r) => r.dataset.key === key);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = key;
      for (let i = 0; i < cells; i++) row.append(document.createElement("td"));
      const cell = document.createElement("td");
      cell.className = "state-col";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "remove";
      button.textContent = label;
      cell.append(button);
      row.append(cell);
    }
    return row;
  }

  /** The bans in force (hidden while there are none and none were ever counted), with the
   * ban, banned-request and access-denied counters from /metrics. */
  function renderBans(bans, metrics) {
    const total = (name) => sum(metrics.get(`${name}_total`)) + sum(metrics.get(name));
    const counted = {
      bans: total("portico_bans"),
      banned: total("portico_banned_requests"),
      denied: total("portico_access_denied"),
    };
    const counters = $("#ban-counters");
    setText(
      counters,
      `${formatCount(counted.bans)} banned · ${formatCount(counted.banned)} requests refused · ` +
        `${formatCount(counted.denied)} denied by access lists`,
    );
    counters.title = "since the start: portico_bans_total, portico_banned_requests_total, portico_access_denied_total";
    $("#bans-card").hidden = bans.length === 0 && counted.bans === 0 && counted.banned === 0;
    $("#bans-empty").hidden = bans.length > 0;
    const body = $("#bans");
    const rows = bans.map((ban) => {
      const row = keyedRow(body, ban.listener + KEY_SEP + ban.key, 4, "Lift");
      row.dataset.listener = ban.listener;
      row.dataset.ban = ban.key;
      const cells = row.children;
      setText(cells[0], ban.listener);
      setText(cells[1], ban.key);
      cells[1].className = "mono";
      setText(cells[2], ban.rule);
      setText(cells[3], formatLeft(ban.expires_in));
      cells[3].className = "num";
      cells[4].firstElementChild.title = `Lift the ban of ${ban.key} on ${ban.listener}`;
      return row;
    });
    place(body, rows);
  }

  /** The access entries added at run time (the config's own lists are not shown); hidden
   * while there are none. */
  function renderAccess(entries) {
    $("#access-card").hidden = entries.length === 0;
    const body = $("#access");
    const rows = entries.map((entry) => {
      const row = keyedRow(body, entry.listener + KEY_SEP + entry.network, 5, "Remove");
      row.dataset.listener = entry.listener;
      row.dataset.network = entry.network;
      const cells = row.children;
      setText(cells[0], entry.listener === "*" ? "every listener" : entry.listener);
      setText(cells[1], entry.network);
      cells[1].className = "mono";
      setText(cells[2], entry.action);
      setText(cells[3], entry.reason);
      setText(cells[4], formatLeft(entry.expires_in));
      cells[4].className = "num";
      cells[5].firstElementChild.title = `Remove ${entry.network} (${entry.action})`;
      return row;
    });
    place(body, rows);
  }

  async function refreshSecurity(metrics) {
    let bans;
    let entries;
    try {
      [bans, entries] = await Promise.all([api("GET", "/api/bans"), api("GET", "/api/access")]);
    } catch {
      return; // an older Portico, or the API down: the rest of the page says so
    }
    renderBans(bans, metrics);
    renderAccess(entries);
  }

  /** DELETE `path` from a row's button; the row goes at the next reading. */
  async function removeFromRow(button, path, done) {
    const used = token();
    button.disabled = true;
    try {
      await api("DELETE", path);
      toast(done, "ok");
      button.closest("tr").remove();
    } catch (error) {
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        askForToken(error, used);
      }
      toast(`Could not do it: ${error.message}`, "error");
      button.disabled = false;
    }
    refresh();
  }

  // -- the fleet (instances sharing state.redis) -------------------------------------------------

  async function refreshFleet() {
    let fleet;
    try {
      fleet = await api("GET", "/api/fleet");
    } catch (error) {
      if (error instanceof ApiError && error.status === 400) page.fleet = false; // no state.redis
      $("#fleet-card").hidden = true;
      return;
    }
    page.fleet = true;
    $("#fleet-card").hidden = false;
    $("#fleet-self").textContent = `this one: ${fleet.instance}`;
    const rows = fleet.instances.map((instance) => {
      const row = document.createElement("tr");
      const cells = [
        instance.instance,
        instance.host || "",
        instance.admin || "",
        instance.ready ? "ready" : "not ready",
        String(instance.generation ?? ""),
        String(instance.changes ?? ""),
      ];
      cells.forEach((text, i) => {
        const cell = document.createElement(i === 0 ? "th" : "td");
        cell.textContent = text;
        if (i >= 4) cell.className = "num";
        row.append(cell);
      });
      if (instance.instance === fleet.instance) row.className = "self";
      return row;
    });
    $("#fleet").replaceChildren(...rows);
  }

  function loop() {
    const started = performance.now();
    const next = () => setTimeout(loop, Math.max(100, POLL_MS - (performance.now() - started)));
    if (document.visibilityState === "hidden") {
      next();
      return;
    }
    refresh().catch((error) => setStatus("offline", `error: ${error.message}`)).finally(next);
  }

  // -- changing a server's state --------------------------------------------------------------

  const VERBS = { ready: "back in rotation", drain: "draining", maint: "in maintenance" };

  async function changeState(row, wanted) {
    const pool = row.dataset.pool;
    const server = row.dataset.server;
    if (row.dataset.state === wanted) return;
    const buttons = row.querySelectorAll(".segmented button");
    const used = token();
    row.classList.add("busy");
    buttons.forEach((b) => (b.disabled = true));
    try {
      const path = `/api/pools/${encodeURIComponent(pool)}/servers/${encodeURIComponent(server)}/state`;
      const updated = await api("PUT", path, { state: wanted });
      page.lastMutation = performance.now();
      showState(row, updated.state);
      toast(`${server} (${pool}) is ${VERBS[updated.state] || updated.state}`, "ok");
    } catch (error) {
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        askForToken(error, used);
      }
      toast(`Could not set ${server} to ${wanted}: ${error.message}`, "error");
    } finally {
      row.classList.remove("busy");
      buttons.forEach((b) => (b.disabled = false));
    }
    refresh();
  }

  function wireActions() {
    $("#pools").addEventListener("click", (event) => {
      const button = event.target.closest(".segmented button");
      if (!button || button.disabled) return;
      changeState(button.closest("tr.server"), button.dataset.state);
    });
    $("#bans").addEventListener("click", (event) => {
      const button = event.target.closest("button.remove");
      if (!button || button.disabled) return;
      const row = button.closest("tr");
      const { listener, ban } = row.dataset;
      const path = `/api/bans/${encodeURIComponent(listener)}/${encodeURIComponent(ban)}`;
      removeFromRow(button, path, `Lifted the ban of ${ban} on ${listener}`);
    });
    $("#access").addEventListener("click", (event) => {
      const button = event.target.closest("button.remove");
      if (!button || button.disabled) return;
      const row = button.closest("tr");
      const { listener, network } = row.dataset;
      const path = `/api/access/${encodeURIComponent(listener)}/${encodeURIComponent(network)}`;
      removeFromRow(button, path, `Removed ${network} from ${listener === "*" ? "every listener" : listener}`);
    });
  }

  // -- start ----------------------------------------------------------------------------------

  function start() {
    takeTokenFromFragment();
    $("#token-toggle").hidden = !token();
    wireTokenForm();
    wireActions();
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") refresh();
    });
    window.addEventListener("hashchange", () => {
      if (!location.hash.includes("token=")) return;
      takeTokenFromFragment();
      $("#token-toggle").hidden = !token();
      page.needsToken = false;
      $("#token-form").hidden = true;
      refresh();
    });
    loop();
  }

  start();
})();
