// coditect dashboard: live updates without reloading the page.
// Text from tasks only ever reaches the page through textContent; class names come from fixed
// lists and links from encodeURIComponent, so no data can become markup or script.
"use strict";

(function () {
  const STATUSES = ["pending", "queued", "running", "success", "failed", "timeout", "cancelled"];
  const FINAL = new Set(["success", "failed", "timeout", "cancelled"]);
  const STATES = ["running", "cancelling", "finished", "cancelled"];
  const COUNTED = ["success", "failed", "timeout", "cancelled", "running", "queued"];

  function setText(element, value) {
    if (element) element.textContent = value === null || value === undefined ? "" : String(value);
  }

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function badge(element, kind, value, allowed) {
    if (!element || !allowed.includes(value)) return;
    element.className = kind + " " + kind + "-" + value;
    element.textContent = value;
  }

  function batchHref(batchId) {
    return "/batches/" + encodeURIComponent(batchId);
  }

  function taskHref(batchId, taskId) {
    return batchHref(batchId) + "/tasks/" + encodeURIComponent(taskId);
  }

  // One EventSource; the header shows whether it is connected. The browser reconnects by itself,
  // sending the id of the last message it got, and the server resumes after it.
  function follow(url, handlers) {
    const indicator = document.getElementById("live-state");
    const source = new EventSource(url);
    const show = function (text, off) {
      if (!indicator) return;
      indicator.hidden = false;
      indicator.className = off ? "live-state off" : "live-state";
      indicator.textContent = text;
    };
    source.addEventListener("open", function () {
      document.body.dataset.live = "open";
      show("live", false);
    });
    source.addEventListener("error", function () {
      document.body.dataset.live = "reconnecting";
      show("reconnecting…", true);
    });
    Object.keys(handlers).forEach(function (kind) {
      source.addEventListener(kind, function (message) {
        handlers[kind](JSON.parse(message.data));
      });
    });
    window.addEventListener("pagehide", function () { source.close(); });
    return source;
  }

  // Replaces an element with the same element of a fresh copy of this page. The copy is this
  // server's own escaped HTML, parsed inert (DOMParser never runs scripts): what a reload would show.
  async function refresh(selector) {
    const response = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector(selector);
    const current = document.querySelector(selector);
    if (fresh && current) current.replaceWith(document.importNode(fresh, true));
  }

  function batchesPage(table) {
    const tbody = table.querySelector("tbody");
    const rows = new Map();
    tbody.querySelectorAll("tr[data-batch]").forEach(function (row) { rows.set(row.dataset.batch, row); });
    const template = document.getElementById("batch-row");

    function show(batch) {
      let row = rows.get(batch.id);
      if (!row) {
        row = template.content.firstElementChild.cloneNode(true);
        row.dataset.batch = batch.id;
        field(row, "link").href = batchHref(batch.id);
        const empty = tbody.querySelector("tr.empty");
        if (empty) empty.remove();
        tbody.prepend(row);
        rows.set(batch.id, row);
      }
      setText(field(row, "link"), batch.id);
      setText(field(row, "name"), batch.name);
      setText(field(row, "created"), batch.created);
      badge(field(row, "state"), "state", batch.state, STATES);
      setText(field(row, "done"), batch.done + "/" + batch.total);
      COUNTED.forEach(function (status) {
        const count = row.querySelector('[data-count="' + status + '"]');
        setText(count, batch.counts[status]);
        if (count && count.parentElement) count.parentElement.hidden = !batch.counts[status];
      });
      setText(field(row, "duration"), batch.duration);
      setText(field(row, "tokens"), batch.tokens);
      setText(field(row, "cost"), batch.cost);
    }

    follow("/live?since=" + encodeURIComponent(table.dataset.since), { batch: show });
  }

  function batchPage(section) {
    const batchId = section.dataset.batch;
    const tbody = document.querySelector("#tasks tbody");
    const template = document.getElementById("task-row");
    const rows = new Map();
    const statusOf = new Map();
    tbody.querySelectorAll("tr[data-task]").forEach(function (row) {
      rows.set(row.dataset.task, row);
      statusOf.set(row.dataset.task, field(row, "status").textContent);
    });
    const nodes = new Map();
    document.querySelectorAll("#graph [data-node]").forEach(function (node) {
      nodes.set(node.getAttribute("data-node"), node);
      if (!statusOf.has(node.getAttribute("data-node"))) {
        const status = STATUSES.find(function (each) { return node.classList.contains("status-" + each); });
        statusOf.set(node.getAttribute("data-node"), status || "pending");
      }
    });

    const statusFilter = document.getElementById("filter-status");
    const search = document.getElementById("filter-q");
    function matches(row) {
      const wanted = statusFilter ? statusFilter.value : "";
      const needle = search ? search.value.trim().toLowerCase() : "";
      if (wanted && statusOf.get(row.dataset.task) !== wanted) return false;
      if (!needle) return true;
      return row.dataset.task.toLowerCase().includes(needle) ||
        field(row, "title").textContent.toLowerCase().includes(needle);
    }
    function filterAll() {
      let shown = 0;
      rows.forEach(function (row) {
        row.hidden = !matches(row);
        if (!row.hidden) shown += 1;
      });
      setText(document.getElementById("shown"), shown + " of the " + rows.size + " tasks listed match");
    }
    if (statusFilter) statusFilter.addEventListener("change", filterAll);
    if (search) search.addEventListener("input", filterAll);

    function addTask(info) {
      if (rows.has(info.task_id)) return;
      const row = template.content.firstElementChild.cloneNode(true);
      const depth = Math.max(0, Math.min(4, Number(info.depth) || 0));
      row.dataset.task = info.task_id;
      row.dataset.depth = String(depth);
      row.className = "depth-" + depth;
      const link = field(row, "link");
      link.href = taskHref(batchId, info.task_id);
      setText(link, info.task_id);
      setText(field(row, "title"), info.title);
      setText(field(row, "agent"), info.agent);
      badge(field(row, "status"), "status", "pending", STATUSES);
      let after = info.parent ? rows.get(info.parent) : null;
      if (after) {
        // After the parent's last descendant: its children are listed under it, in order.
        const parentDepth = Number(after.dataset.depth) || 0;
        while (after.nextElementSibling && (Number(after.nextElementSibling.dataset.depth) || 0) > parentDepth) {
          after = after.nextElementSibling;
        }
        after.after(row);
      } else {
        tbody.appendChild(row);
      }
      rows.set(info.task_id, row);
      statusOf.set(info.task_id, "pending");
      row.hidden = !matches(row);
    }

    function updateTask(update) {
      const was = statusOf.get(update.task_id);
      // A replayed event older than what the page shows: a final status never changes.
      if (FINAL.has(was) && !FINAL.has(update.status)) return;
      if (!STATUSES.includes(update.status)) return;
      statusOf.set(update.task_id, update.status);
      const node = nodes.get(update.task_id);
      if (node) node.setAttribute("class", "node status-" + update.status);
      const row = rows.get(update.task_id);
      if (!row) return;
      badge(field(row, "status"), "status", update.status, STATUSES);
      if (update.attempt) setText(field(row, "attempts"), update.attempt);
      if (update.worker) setText(field(row, "worker"), update.worker);
      if (FINAL.has(update.status)) {
        setText(field(row, "duration"), update.duration);
        setText(field(row, "tokens"), update.tokens);
        setText(field(row, "cost"), update.cost);
        if (update.model) setText(field(row, "model"), update.model);
        if (update.agent) setText(field(row, "agent"), update.agent);
      }
      row.hidden = !matches(row);
    }

    function updateSummary(batch) {
      badge(section.querySelector('[data-summary="state"]'), "state", batch.state, STATES);
      setText(section.querySelector('[data-summary="progress"]'), batch.done + "/" + batch.total + " done");
      setText(section.querySelector('[data-summary="duration"]'), batch.duration);
      setText(section.querySelector('[data-summary="tokens"]'), batch.tokens);
      setText(section.querySelector('[data-summary="cost"]'), batch.cost);
      COUNTED.forEach(function (status) {
        setText(section.querySelector('[data-count="' + status + '"]'), batch.counts[status]);
      });
      const cancel = section.querySelector('form[data-show="running"]');
      if (cancel) cancel.hidden = Boolean(batch.finished);
      const rerun = section.querySelector('form[data-show="rerunnable"]');
      if (rerun) rerun.hidden = !batch.rerunnable;
    }

    const since = encodeURIComponent(section.dataset.since);
    follow(section.dataset.live + "?since=" + since, { newtask: addTask, task: updateTask, summary: updateSummary });
  }

  function taskPage(section) {
    const taskId = section.dataset.task;
    let refreshing = false;

    function addEvent(update) {
      if (update.task_id !== taskId) return;
      const timeline = document.getElementById("timeline");
      const template = document.getElementById("timeline-item");
      if (timeline && template) {
        const empty = timeline.querySelector("li.empty");
        if (empty) empty.remove();
        const item = template.content.firstElementChild.cloneNode(true);
        if (STATUSES.includes(update.status)) item.className = "ev-" + update.status;
        setText(item.querySelector("time"), update.at);
        setText(item.querySelector(".type"), update.type);
        setText(item.querySelector(".detail"), update.detail);
        timeline.appendChild(item);
      }
      const status = document.getElementById("task-status");
      if (status && !(FINAL.has(status.textContent) && !FINAL.has(update.status))) {
        badge(status, "status", update.status, STATUSES);
      }
      if (FINAL.has(update.status) && !refreshing) {
        refreshing = true;  // the result (output, error, usage) is on the server's page now
        refresh("#task").finally(function () { refreshing = false; });
      }
    }

    const query = "?since=" + encodeURIComponent(section.dataset.since) + "&task=" + encodeURIComponent(taskId);
    follow(section.dataset.live + query, { task: addEvent });
  }

  function refreshEvery(element) {
    const seconds = Math.max(2, Number(element.dataset.refresh) || 5);
    const selector = "#" + element.id;
    window.setInterval(function () {
      if (!document.hidden) refresh(selector).catch(function () { /* the next round tries again */ });
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const batches = document.getElementById("batches");
    if (batches && batches.dataset.live) batchesPage(batches);
    const batch = document.getElementById("batch");
    if (batch) batchPage(batch);
    const task = document.getElementById("task");
    if (task) taskPage(task);
    const refreshing = document.querySelector("[data-refresh][id]");
    if (refreshing) refreshEvery(refreshing);
  });
})();
