// The sign-in link's secret travels in the URL fragment, which browsers never send to a server
// (so it stays out of access logs and Referer headers). Post it once, and take it off the address bar.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const secret = window.location.hash.slice(1);
  window.history.replaceState(null, "", window.location.pathname);
  const form = document.getElementById("login");
  const status = document.getElementById("login-status");
  if (!secret) {
    status.textContent = "This sign-in link is incomplete. Run `osnova-server admin-url` on the server and open the whole link it prints.";
    return;
  }
  document.getElementById("secret").value = secret;
  form.submit();
});
