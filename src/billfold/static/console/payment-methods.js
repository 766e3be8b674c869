// Stripe's card form on /console/payment-methods: Stripe.js (loaded before this file) collects the
// card in its own frame; on submit we ask the server for a SetupIntent, confirm it with the card,
// and post the PaymentMethod's id (never the card) to /console/payment-methods/attach.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("stripe-config").textContent);
  var form = document.getElementById("stripe-card-form");
  var errors = document.getElementById("card-errors");
  if (!form || typeof window.Stripe !== "function") {
    if (errors) errors.textContent = "Stripe's card form could not be loaded. Check the connection and reload.";
    return;
  }
  var stripe = window.Stripe(config.publishableKey);
  var card = stripe.elements().create("card");
  card.mount("#card-element");
  card.on("change", function (event) {
    errors.textContent = event.error ? event.error.message : "";
  });
  var busy = false;
  form.addEventListener("submit", function (event) {
    if (form.elements.payment_method_id.value) return; // the attach post itself
    event.preventDefault();
    if (busy) return;
    busy = true;
    errors.textContent = "";
    var body = new FormData();
    body.append("csrf_token", form.elements.csrf_token.value);
    fetch(config.setupUrl, { method: "POST", body: body, credentials: "same-origin" })
      .then(function (response) {
        return response.json().then(function (data) {
          if (!response.ok) throw new Error(data.error || "The card could not be set up.");
          return data.clientSecret;
        });
      })
      .then(function (secret) {
        return stripe.confirmCardSetup(secret, { payment_method: { card: card } });
      })
      .then(function (result) {
        if (result.error) throw new Error(result.error.message);
        var method = result.setupIntent.payment_method;
        form.elements.payment_method_id.value = typeof method === "string" ? method : method.id;
        form.submit();
      })
      .catch(function (error) {
        errors.textContent = error.message;
        busy = false;
      });
  });
})();
