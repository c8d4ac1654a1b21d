"""The SIP front end: switches that speak only SIP send the INVITE here and get the verdict
back as a 302 redirect (or the policy's 603/608). :mod:`.config` holds ``[sip]``,
:mod:`.message` reads and writes SIP messages, :mod:`.server` runs the UDP and TCP
listeners and the server transactions. Nothing is imported here: ``verifier.settings``
imports :mod:`.config` alone.
"""
