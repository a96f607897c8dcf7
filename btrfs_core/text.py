"""Text in messages and logs."""


def shortened(text: str, limit: int) -> str:
    """The text, cut after `limit` characters with "..." when longer (names and paths in requests may be
    kilobytes long; a message shows enough of them to recognise)."""
    return text if len(text) <= limit else text[:limit] + "..."
