// Passkeys: ask the browser to create or use a WebAuthn credential and post the answer, as
// JSON, to the server, which checks it. The CSRF token comes from the button's data-csrf.
(function () {
  "use strict";

  function toBytes(value) {
    var text = value.replace(/-/g, "+").replace(/_/g, "/");
    while (text.length % 4) { text += "="; }
    var raw = atob(text);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) { raw += String.fromCharCode(bytes[i]); }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      return Object.assign({}, item, { id: toBytes(item.id) });
    });
  }

  function creationOptions(json) {
    return Object.assign({}, json, {
      challenge: toBytes(json.challenge),
      user: Object.assign({}, json.user, { id: toBytes(json.user.id) }),
      excludeCredentials: descriptors(json.excludeCredentials),
    });
  }

  function requestOptions(json) {
    return Object.assign({}, json, {
      challenge: toBytes(json.challenge),
      allowCredentials: descriptors(json.allowCredentials),
    });
  }

  function credentialJSON(credential) {
    var response = credential.response;
    var out = {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      response: { clientDataJSON: toText(response.clientDataJSON) },
    };
    if (response.attestationObject) {
      out.response.attestationObject = toText(response.attestationObject);
      if (response.getTransports) { out.response.transports = response.getTransports(); }
    } else {
      out.response.authenticatorData = toText(response.authenticatorData);
      out.response.signature = toText(response.signature);
      if (response.userHandle) { out.response.userHandle = toText(response.userHandle); }
    }
    return out;
  }

  function post(url, csrf, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRF-Token": csrf,
      },
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) { throw new Error(data.detail || "The passkey could not be used."); }
        return data;
      });
    });
  }

  function showError(error) {
    var box = document.getElementById("passkey-error");
    if (box) {
      box.textContent = error && error.name === "NotAllowedError"
        ? "The passkey request was cancelled or timed out."
        : (error && error.message) || "The passkey could not be used.";
      box.hidden = false;
    }
  }

  function signIn(button) {
    var csrf = button.dataset.csrf;
    var mode = button.dataset.mode;
    post("/login/passkey/options", csrf, { mode: mode })
      .then(function (data) {
        return navigator.credentials.get({ publicKey: requestOptions(data.publicKey) })
          .then(function (credential) {
            return post("/login/passkey", csrf, {
              ticket: data.ticket,
              credential: credentialJSON(credential),
              next: button.dataset.next || null,
            });
          });
      })
      .then(function (data) { window.location.assign(data.redirect); })
      .catch(showError);
  }

  function register(button) {
    var csrf = button.dataset.csrf;
    var name = document.getElementById("passkey-name");
    post("/account/passkeys/options", csrf, {})
      .then(function (data) {
        return navigator.credentials.create({ publicKey: creationOptions(data.publicKey) })
          .then(function (credential) {
            return post("/account/passkeys", csrf, {
              ticket: data.ticket,
              credential: credentialJSON(credential),
              name: name ? name.value : "Passkey",
            });
          });
      })
      .then(function (data) { window.location.assign(data.redirect); })
      .catch(showError);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var supported = !!window.PublicKeyCredential;
    var signInButton = document.getElementById("passkey-button");
    if (signInButton) {
      if (!supported) { signInButton.hidden = true; }
      signInButton.addEventListener("click", function () { signIn(signInButton); });
    }
    var registerButton = document.getElementById("passkey-register");
    if (registerButton) {
      if (!supported) { registerButton.hidden = true; }
      registerButton.addEventListener("click", function () { register(registerButton); });
    }
  });
})();
