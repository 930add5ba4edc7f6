// The admin page's only script, served as a file (the page's Content-Security-Policy allows no inline
// script). Everything works without it: it hides the Graph fields while "Platform default" is chosen and
// adds a Copy button to each command of the setup guide.
(function () {
  var fields = document.getElementById('customer-fields');
  if (fields) {
    var sync = function () {
      var chosen = document.querySelector('input[name=provider]:checked');
      fields.hidden = !!chosen && chosen.value !== 'customer';
    };
    document.querySelectorAll('input[name=provider]').forEach(function (r) { r.addEventListener('change', sync); });
    sync();
  }
  document.querySelectorAll('pre.command').forEach(function (pre) {
    var button = document.createElement('button');
    button.type = 'button';
    button.className = 'copy';
    // The accessible name starts with the visible text, whatever the button says now.
    var say = function (text) {
      button.textContent = text;
      button.setAttribute('aria-label', text + ': ' + pre.textContent.slice(0, 60));
    };
    say('Copy');
    button.addEventListener('click', function () {
      navigator.clipboard.writeText(pre.textContent).then(function () {
        say('Copied');
      }, function () {
        say('Select the text and copy it');
      });
    });
    pre.insertAdjacentElement('afterend', button);
  });
})();
