/* segcrit admin: the overview's charts (uPlot), and pausing the live debugger while reading. */
"use strict";

(function () {
  const COLORS = {
    events_in: "#1f6feb", events_refused: "#c62828", events_processed: "#8250df",
    criteo_calls_ok: "#1a7f37", criteo_calls_failed: "#c62828",
    backlog: "#a66300", pending_changes: "#1f6feb", delivery_lag_secs: "#8250df", dead_letters: "#c62828",
  };
  const CHARTS = {
    events: [["events_in", "in"], ["events_refused", "refused"], ["events_processed", "processed"]],
    calls: [["criteo_calls_ok", "2xx"], ["criteo_calls_failed", "failed"]],
    queue: [["backlog", "backlog"], ["pending_changes", "pending changes"]],
    lag: [["delivery_lag_secs", "lag (s)"], ["dead_letters", "dead letters"]],
  };

  function drawCharts() {
    const source = document.getElementById("charts-data");
    if (!source || typeof uPlot === "undefined") {
      return;
    }
    const data = JSON.parse(source.textContent);
    document.querySelectorAll("figure.chart").forEach(function (figure) {
      const lines = CHARTS[figure.dataset.chart] || [];
      const series = [{}];
      const columns = [data.minutes];
      lines.forEach(function (line) {
        series.push({ label: line[1], stroke: COLORS[line[0]], width: 1.5, spanGaps: false });
        columns.push(data.series[line[0]] || []);
      });
      const width = Math.max(320, figure.clientWidth - 20);
      new uPlot({ width: width, height: 200, series: series, axes: [{}, { size: 60 }], legend: { live: true } }, columns, figure);
    });
  }

  // The debugger refreshes every 2 s; while a message is open (or the pointer is over the
  // table) a refresh would close it under the reader's eyes, so it waits.
  function holdLiveRowsWhileReading() {
    document.body.addEventListener("htmx:beforeRequest", function (event) {
      const target = event.detail && event.detail.elt;
      if (target && target.id === "event-rows" && (target.querySelector("details[open]") || target.matches(":hover"))) {
        event.preventDefault();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    holdLiveRowsWhileReading();
  });
})();
