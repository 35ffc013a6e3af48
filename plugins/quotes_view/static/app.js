// The live quotes page: polls the plugin's JSON endpoints and draws candles with TradingView's
// lightweight-charts (1m/5m/1h/1D, volume below, gap markers on the time axis) or, in "Ticks" mode,
// the tick line with uPlot. Symbol, resolution and range live in the query string, so a view can be
// bookmarked; changing them reloads the page (Airflow's UI mirrors the iframe's URL into its own
// address bar on each load).
(function () {
  "use strict";
  const params = new URLSearchParams(window.location.search);
  const symbol = params.get("symbol") || "";
  const resolution = params.get("resolution") || "1";
  const ticks = resolution === "ticks";
  const range = params.get("range") || (ticks ? "15m" : "");
  const refreshMs = Math.max(250, Number(params.get("refresh") || 1000));
  const healthMs = 5000;
  const RANGES = ticks
    ? [["5m", "5 min"], ["15m", "15 min"], ["1h", "1 hour"], ["6h", "6 hours"], ["24h", "24 hours"]]
    : [["", "300 bars"], ["1h", "1 hour"], ["6h", "6 hours"], ["24h", "24 hours"], ["7d", "7 days"],
      ["30d", "30 days"], ["365d", "1 year"]];
  const $ = (id) => document.getElementById(id);
  const state = { symbol, resolution, range, plot: null, candles: null, lastKey: null, samples: [], errors: 0 };
  window.__quotesView = state; // read by the browser test (freshness samples, current symbol)

  function fmt(value, digits) {
    if (value === null || value === undefined) return "—";
    if (typeof value !== "number") return String(value);
    return digits === undefined ? String(value) : value.toFixed(digits);
  }

  async function getJson(path) {
    const resp = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) throw new Error("not signed in to Airflow (" + resp.status + ")");
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(path.split("?")[0] + ": " + resp.status + " " + detail);
    }
    return resp.json();
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function makePlot(t, price) {
    const el = $("chart");
    const opts = {
      width: Math.max(320, el.clientWidth || 800),
      height: 360,
      title: state.symbol,
      scales: { x: { time: true } },
      series: [{}, { label: "price", stroke: "#2962ff", width: 1.5, points: { show: false } }],
      axes: [{}, { size: 80 }],
    };
    return new uPlot(opts, [t, price], el);
  }

  // A hole in the data (pipeline stopped) stays a hole: a null point breaks the line there.
  function withGaps(chart) {
    const gapMs = Math.max(10000, 3 * chart.bucket_s * 1000);
    const t = [];
    const price = [];
    chart.t.forEach((ms, i) => {
      if (i > 0 && ms - chart.t[i - 1] > gapMs) {
        t.push((chart.t[i - 1] + ms) / 2000);
        price.push(null);
      }
      t.push(ms / 1000);
      price.push(chart.price[i]);
    });
    return [t, price];
  }

  function drawChart(chart) {
    const [t, price] = withGaps(chart);
    const el = $("chart");
    if (!state.plot) state.plot = makePlot(t, price);
    else state.plot.setData([t, price]);
    el.dataset.points = String(chart.t.length);
    el.dataset.symbol = chart.symbol;
    const n = chart.t.length;
    el.dataset.lastT = n ? String(chart.t[n - 1]) : "";
    el.dataset.lastPrice = n ? String(chart.price[n - 1]) : "";
  }

  // ------------------------------------------------------------ candles (lightweight-charts)
  function makeCandles() {
    const LC = window.LightweightCharts;
    const el = $("candles");
    const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
    const chart = LC.createChart(el, {
      autoSize: true,
      layout: { background: { color: "transparent" }, textColor: dark ? "#d1d4dc" : "#333" },
      grid: { vertLines: { color: "rgba(128,128,128,0.15)" }, horzLines: { color: "rgba(128,128,128,0.15)" } },
      timeScale: { timeVisible: state.resolution !== "1D", secondsVisible: false },
    });
    const candles = chart.addSeries(LC.CandlestickSeries, {
      upColor: "#26a69a", downColor: "#ef5350", borderVisible: false,
      wickUpColor: "#26a69a", wickDownColor: "#ef5350",
    });
    const volume = chart.addSeries(LC.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
    volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.25 } });
    const markers = LC.createSeriesMarkers(candles, []);
    return { chart, candles, volume, markers, fitted: false, firstT: null };
  }

  // A gap is marked on the candle its start falls in (or the next candle drawn, if that one is missing).
  function gapMarkers(gaps, bars, widthS) {
    const times = bars.map((b) => b.time);
    const byTime = new Map();
    for (const gap of gaps) {
      const floor = Math.floor(gap.start_ms / 1000 / widthS) * widthS;
      let time = times.find((t) => t >= floor);
      if (time === undefined) time = times[times.length - 1];
      if (time === undefined) continue;
      const text = (byTime.get(time) ? byTime.get(time).text + ", " : "gap: ") + (gap.cause || "gap");
      byTime.set(time, { time, position: "aboveBar", color: "#e67e22", shape: "arrowDown", text, id: gap.gap_id });
    }
    return [...byTime.values()].sort((a, b) => a.time - b.time);
  }

  function drawCandles(answer) {
    if (!state.candles) state.candles = makeCandles();
    const view = state.candles;
    const bars = answer.candles.map((c) => ({
      time: c.t / 1000, open: c.open, high: c.high, low: c.low, close: c.close,
    }));
    const volumes = answer.candles.filter((c) => c.volume !== null).map((c) => ({
      time: c.t / 1000, value: c.volume, color: c.close >= c.open ? "rgba(38,166,154,0.5)" : "rgba(239,83,80,0.5)",
    }));
    view.candles.setData(bars);
    view.volume.setData(volumes);
    view.markers.setMarkers(gapMarkers(answer.gaps, bars, answer.resolution_s));
    const firstT = bars.length ? bars[0].time : null;
    if (!view.fitted || firstT !== view.firstT) view.chart.timeScale().fitContent();
    view.fitted = bars.length > 0;
    view.firstT = firstT;
    const el = $("candles");
    // What the chart itself holds (not what was sent): read by the browser test.
    el.dataset.candles = String(view.candles.data().length);
    el.dataset.volumeBars = String(view.volume.data().length);
    el.dataset.gapMarkers = String(view.markers.markers().length);
    el.dataset.symbol = answer.symbol;
    el.dataset.resolution = answer.resolution;
    el.dataset.fromKafka = String(answer.bars_from_kafka);
    el.dataset.lastT = bars.length ? String(answer.candles[bars.length - 1].t) : "";
    el.dataset.lastClose = bars.length ? String(bars[bars.length - 1].close) : "";
    $("chart-note").textContent = (bars.length ? bars.length + " " + answer.label + " candles" : "no bars in range") +
      (answer.bars_from_kafka ? " · " + answer.bars_from_kafka + " newest minute(s) from Kafka" : "") +
      (answer.kafka_error ? " · Kafka: " + answer.kafka_error : "");
    const list = $("gap-list");
    list.replaceChildren();
    for (const gap of answer.gaps) {
      const li = document.createElement("li");
      li.textContent = "gap " + gap.start + " → " + gap.end + " (" + gap.cause + ", shard " + gap.shard + ")" +
        (gap.detail ? ": " + gap.detail : "");
      li.dataset.gapId = gap.gap_id;
      list.appendChild(li);
    }
    list.dataset.count = String(answer.gaps.length);
  }

  function drawLatest(entry) {
    $("latest-symbol").textContent = state.symbol;
    const q = entry.quote;
    const price = $("last-price");
    if (!q) { price.textContent = "no quotes yet"; return; }
    price.textContent = fmt(q.price);
    price.dataset.partition = String(q.partition);
    price.dataset.offset = String(q.offset);
    price.dataset.receivedAt = q.received_at;
    price.dataset.price = String(q.price);
    const change = $("last-change");
    change.textContent = q.change === null ? "" : (q.change > 0 ? "+" : "") + fmt(q.change);
    change.className = "change " + (q.change > 0 ? "up" : q.change < 0 ? "down" : "");
    $("last-change-pct").textContent = q.change_percent === null ? "—" : fmt(q.change_percent, 2) + " %";
    $("last-volume").textContent = fmt(q.volume);
    $("last-event-time").textContent = q.event_time || "—";
    $("last-received").textContent = q.received_at;
    $("last-from").textContent = entry.from === "kafka" ? "Kafka (not indexed yet)" : "Elasticsearch";
    const indexed = entry.indexed;
    $("indexed-price").textContent = indexed ? fmt(indexed.price) : "—";
    $("indexed-price").dataset.offset = indexed ? String(indexed.offset) : "";
    $("indexed-price").dataset.price = indexed ? String(indexed.price) : "";
    $("indexed-at").textContent = indexed ? "offset " + indexed.offset + ", " + indexed.received_at : "";
    const key = q.partition + ":" + q.offset;
    if (key !== state.lastKey) {
      // Freshness of a tick: the producer's received_at → the moment this page shows it (same machine's clock).
      const ms = Date.now() - Date.parse(q.received_at);
      if (state.lastKey !== null) state.samples.push({ offset: q.offset, receivedAt: q.received_at, ms });
      state.lastKey = key;
      $("freshness").textContent = ms + " ms";
      $("freshness").dataset.ms = String(ms);
    }
  }

  function drawOthers(latest) {
    const body = $("others-body");
    body.replaceChildren();
    for (const [name, entry] of Object.entries(latest)) {
      const q = entry.quote;
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      const next = new URLSearchParams({ symbol: name, resolution: state.resolution });
      if (state.range) next.set("range", state.range);
      link.href = "?" + next.toString();
      link.textContent = name;
      const cells = [link, q ? fmt(q.price) : "—", q && q.change_percent !== null ? fmt(q.change_percent, 2) : "—",
        q ? q.received_at.slice(11, 23) : "—"];
      for (const c of cells) {
        const td = document.createElement("td");
        if (typeof c === "string") td.textContent = c; else td.appendChild(c);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function drawHealth(h) {
    const a = h.airflow || {};
    const p = a.producer;
    const tries = p && p.tasks && p.tasks.length ? ", try " + Math.max(...p.tasks.map((t) => t.try_number || 0)) : "";
    const ages = Object.entries(h.tick_age_s || {})
      .map(([s, age]) => s.split(":").pop() + " " + (age === null ? "—" : age.toFixed(1) + " s")).join(" · ");
    const last = a.producer_last_summary;
    const reconnects = last ? "; last finished run: " + last.reconnects + " reconnect(s)" : "";
    $("producer-state").textContent =
      (p ? p.state + tries : "no run") + reconnects + (ages ? " — last tick: " + ages : "");
    const w = a.indexer_last_finished;
    const latest = a.indexer_latest;
    $("indexer-state").textContent = w
      ? w.state + " [" + w.data_interval_start + " → " + w.data_interval_end + ")" +
        (latest && latest.run_id !== w.run_id ? "; next " + latest.state : "")
      : (a.error || "no finished window yet");
    drawShards(p, a.error);
    $("dlq-count").textContent = h.dead_letters_last_hour === null ? "no DLQ topic" : String(h.dead_letters_last_hour);
    $("lag-total").textContent = String(h.lag_total) + " records";
    const body = $("lag-body");
    body.replaceChildren();
    for (const p of h.lag) {
      const tr = document.createElement("tr");
      for (const v of [p.partition, p.end_offset, p.committed === null ? "—" : p.committed, p.lag === null ? "—" : p.lag]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  // One row per shard of the running producer run (a mapped task instance each; unsharded: shard "0").
  function drawShards(producer, error) {
    const body = $("shards-body");
    body.replaceChildren();
    const shards = (producer && producer.shards) || [];
    $("shards-run").textContent = producer ? producer.run_id + " (" + producer.state + ")" : (error || "no run");
    for (const shard of shards) {
      const s = shard.stats;
      const stats = s
        ? ["quotes", "bars", "gaps", "reconnects", "symbols"].filter((k) => s[k] !== undefined && s[k] !== null)
          .map((k) => k + " " + s[k]).join(", ") + (s.from ? " (" + s.from + ")" : "")
        : "not reachable yet";
      const tr = document.createElement("tr");
      tr.dataset.shard = shard.shard;
      tr.dataset.state = String(shard.state);
      for (const v of [shard.shard, shard.map_index, shard.state, shard.try_number, stats]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    body.dataset.count = String(shards.length);
    body.dataset.runId = producer ? producer.run_id : "";
  }

  async function tick() {
    const q = "symbol=" + encodeURIComponent(state.symbol);
    const chartPath = ticks
      ? "api/chart?" + q + "&range=" + encodeURIComponent(state.range)
      : "api/candles?" + q + "&resolution=" + encodeURIComponent(state.resolution) +
        (state.range ? "&range=" + encodeURIComponent(state.range) : "");
    try {
      const [chart, latest] = await Promise.all([
        getJson(chartPath),
        getJson("api/latest?" + Array.from(new Set([state.symbol, ...state.others]))
          .map((s) => "symbol=" + encodeURIComponent(s)).join("&")),
      ]);
      if (ticks) drawChart(chart); else drawCandles(chart);
      drawLatest(latest.latest[state.symbol]);
      drawOthers(latest.latest);
      setStatus("live · updated " + new Date().toLocaleTimeString(), false);
    } catch (err) {
      state.errors += 1;
      setStatus(String(err.message || err), true);
    } finally {
      setTimeout(tick, refreshMs);
    }
  }

  async function healthTick() {
    try {
      drawHealth(await getJson("api/health?symbol=" + state.others.map(encodeURIComponent).join("&symbol=")));
    } catch (err) {
      setStatus(String(err.message || err), true);
    } finally {
      setTimeout(healthTick, healthMs);
    }
  }

  async function start() {
    let symbols;
    try {
      symbols = await getJson("api/symbols");
    } catch (err) {
      setStatus(String(err.message || err), true);
      return;
    }
    state.others = symbols.default.length ? symbols.default : symbols.symbols.slice(0, 10);
    if (!state.symbol) state.symbol = state.others[0] || symbols.symbols[0] || "";
    const select = $("symbol");
    for (const name of symbols.symbols.includes(state.symbol) ? symbols.symbols : [state.symbol, ...symbols.symbols]) {
      const opt = document.createElement("option");
      opt.value = name;
      opt.textContent = name;
      select.appendChild(opt);
    }
    select.value = state.symbol;
    const rangeSelect = $("range");
    for (const [value, label] of RANGES) {
      const opt = document.createElement("option");
      opt.value = value;
      opt.textContent = label;
      rangeSelect.appendChild(opt);
    }
    if (![...rangeSelect.options].some((o) => o.value === state.range)) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = state.range;
      rangeSelect.appendChild(opt);
    }
    rangeSelect.value = state.range;
    const resolutionSelect = $("resolution");
    if (![...resolutionSelect.options].some((o) => o.value === state.resolution)) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = state.resolution;
      resolutionSelect.appendChild(opt);
    }
    resolutionSelect.value = state.resolution;
    // A new resolution starts from its default range (ranges differ between candles and ticks).
    const go = (changes) => {
      const next = new URLSearchParams({ symbol: select.value, resolution: resolutionSelect.value });
      if (changes.range) next.set("range", changes.range);
      window.location.search = next.toString();
    };
    select.addEventListener("change", () => go({ range: rangeSelect.value }));
    rangeSelect.addEventListener("change", () => go({ range: rangeSelect.value }));
    resolutionSelect.addEventListener("change", () => go({}));
    $(ticks ? "chart" : "candles").hidden = false;
    document.body.dataset.ready = "1"; // the controls answer from here on (read by the browser tests)
    window.addEventListener("resize", () => {
      if (state.plot) state.plot.setSize({ width: $("chart").clientWidth, height: 360 });
    });
    tick();
    healthTick();
  }

  start();
})();
