"""Every conversion between domain types and their protobuf form, each written once.

The node, the coordinator and the SDK all encode and decode through these modules, so that a
field added to a message is handled in one place, and values a newer peer sends that this
version does not know decode to an explicit unknown value instead of failing.
"""
