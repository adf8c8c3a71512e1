"""Member-to-member transport: raft messages, snapshots and calls between etcdd members.

`framing` is the wire format (a core); `connection` the base protocol every peer
connection is built on and its bounds (`PeerLimits`), `protocol` the inbound side and the
outbound message stream, `snapshot` the snapshot temp file and sender, `calls` the
outbound call stream and the calls in flight to one peer, and
`transport.PeerTransport` the connections to every peer (shells). Nothing is re-exported
here, so importing the core does not import Twisted's networking.
"""
