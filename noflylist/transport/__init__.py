"""The HTTP/1.1 transport: one package, from socket bytes to whole requests and back.

Modules, in the order a request passes them (every limit they enforce is a field of one
frozen :class:`~noflylist.transport.limits.Limits`, passed in from the server down to each
connection's framer):

* :mod:`~noflylist.transport.framing`: the pure, strict RFC 9112 request framer and the
  response encoder (bytes in, :class:`~noflylist.transport.framing.Request` out; no sockets);
* :mod:`~noflylist.transport.connection`: one connection's state machine (it has a framer);
  every change of a connection's state is one of its methods;
* :mod:`~noflylist.transport.loop`: the selector loop, the only thread that touches a
  socket, applying every connection limit (fair turns, timeouts, buffer budgets);
* :mod:`~noflylist.transport.workers`: the few threads that answer slow routes;
* :mod:`~noflylist.transport.server`: the façade that binds, starts and stops the loop.

What a request means is not decided here: the server is handed the routes
(:class:`noflylist.routes.Routes`, which calls :mod:`noflylist.decision`), and nothing in
this package imports either.

Why not :mod:`http.server`, measured by ``bench/why_not_http_server.py`` on a 2-core machine
(figures in ``bench/README.md``):

* it runs a thread per connection: 1,000 idle keep-alive sockets cost it 1,001 threads
  (46 MiB), this loop 11 threads (38 MiB); and a bounded pool of 8 threads is starved by 8
  idle sockets: a ninth client got no answer in 5 s;
* its timeout is per socket operation: a client sending its head a byte every half second
  held a connection for over 60 s; here the whole head has a deadline (408 at 10.0 s);
* its parser is lax: it accepts bare LF, obs-fold, two ``Content-Length`` fields and bare CR,
  each of which this framer refuses with 400;
* it logs the request line, so the queried name, on every request (4 of 4), and echoes it in
  its error page; here the access log holds only fixed strings and numbers.
"""
