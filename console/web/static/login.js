"use strict";
// Carries ?next= into the form and shows a failed attempt.
(function () {
  const q = new URLSearchParams(location.search);
  const next = q.get("next");
  if (next && next.startsWith("/") && !next.startsWith("//")) {
    document.getElementById("next").value = next;
  }
  if (q.get("failed")) {
    document.getElementById("failed").hidden = false;
  }
})();
