"""Member-to-member transport: raft messages and snapshots between etcdd members.

`framing` is the wire format (a core); `protocol` holds the Twisted protocols and
`transport.PeerTransport` the connections to every peer (shells). Nothing is re-exported
here, so importing the core does not import Twisted's networking.
"""
