// OAuth 2.0 Form Post Response Mode: send the answer on without a click. The page's
// Continue button does the same for browsers without JavaScript.
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("form-post");
  if (form) {
    form.submit();
  }
});
