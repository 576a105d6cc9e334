// The web pager's form: POST /v1/pager/{user} with the visitor's message.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const to = new URLSearchParams(location.search).get("to");
  if (to) $("pager-to").value = to;
  (to ? $("pager-body") : $("pager-to")).focus();

  function say(text, ok) {
    const status = $("pager-status");
    status.textContent = text;
    status.className = ok ? "hint" : "error";
  }

  // Why the server's filter refused the message (REJECTED); nothing was left.
  function refusal(reason) {
    if (reason === "spam") return "Not sent: this server's filter refused the message as spam.";
    if (reason === "blocked_words") return "Not sent: this server's filter refused the message because it contains a phrase the server blocks.";
    return "Not sent: this server's filter refused the message.";
  }

  $("pager-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = $("pager-to").value.trim();
    const body = $("pager-body").value;
    if (!user || !body.trim()) return say("Say who it is for, and write a message.");
    const payload = { body };
    if ($("pager-name").value.trim()) payload.name = $("pager-name").value.trim();
    if ($("pager-contact").value.trim()) payload.contact = $("pager-contact").value.trim();
    $("pager-send").disabled = true;
    try {
      const response = await fetch("/v1/pager/" + encodeURIComponent(user), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(payload),
      });
      if (response.ok) {
        $("pager-body").value = "";
        say("Message left for " + user + ".", true);
      } else {
        const problem = await response.json().catch(() => ({}));
        const reasons = {
          NO_SUCH_USER: "There is no one called " + user + ".",
          RATE_LIMITED: "Too many messages from here; try again in a minute.",
          NOT_FOUND: "The pager is switched off on this server.",
          MESSAGE_TOO_LARGE: "That message is too long.",
          REJECTED: refusal(problem.reason),
        };
        say(reasons[problem.code] || problem.detail || "The message could not be left.");
      }
    } catch {
      say("Cannot reach the server.");
    } finally {
      $("pager-send").disabled = false;
    }
  });
})();
