// The usage page: the stacked bar chart (Chart.js, vendored), and the viewer's own time zone
// when the address names none. Everything else is the server's HTML; without JavaScript the
// page shows the same numbers as a table.
(function () {
  "use strict";

  // First visit without ?tz=: show the viewer's time zone (one reload, same parameters).
  var zone = document.getElementById("f-tz");
  if (zone && zone.dataset.explicit !== "true" && window.Intl) {
    var mine = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (mine && mine !== zone.value && zone.querySelector('option[value="' + mine + '"]')) {
      var params = new URLSearchParams(window.location.search);
      params.set("tz", mine);
      window.location.replace(window.location.pathname + "?" + params.toString());
      return;
    }
  }

  // The custom dates matter only for a custom range.
  var range = document.getElementById("f-range");
  function syncDates() {
    var custom = range && range.value === "custom";
    ["f-start", "f-end"].forEach(function (id) {
      var input = document.getElementById(id);
      if (input) input.disabled = !custom;
    });
  }
  if (range) {
    range.addEventListener("change", syncDates);
    syncDates();
  }

  var canvas = document.getElementById("usage-chart");
  var source = document.getElementById("usage-data");
  if (!canvas || !source || !window.Chart) return;
  var data = JSON.parse(source.textContent);
  var style = getComputedStyle(document.documentElement);
  function token(name) { return style.getPropertyValue(name).trim(); }
  var palette = [1, 2, 3, 4, 5, 6, 7, 8].map(function (i) { return token("--chart-" + i); });
  var money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });

  new window.Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: data.series.map(function (series, i) {
        return {
          label: series.label,
          data: series.data,
          backgroundColor: palette[i % palette.length],
          borderWidth: 0,
          maxBarThickness: 48
        };
      })
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { stacked: true, grid: { display: false }, ticks: { color: token("--muted"), maxRotation: 0, autoSkip: true } },
        y: {
          stacked: true,
          beginAtZero: true,
          grid: { color: token("--grid") },
          ticks: { color: token("--muted"), callback: function (v) { return money.format(v); } }
        }
      },
      plugins: {
        legend: { position: "bottom", labels: { color: token("--text"), boxWidth: 12 } },
        tooltip: {
          callbacks: {
            label: function (item) { return item.dataset.label + ": " + money.format(item.parsed.y); }
          }
        }
      }
    }
  });
})();
