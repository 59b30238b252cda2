"""What a user sees of a rewrite: the flow comment and metadata, the explain command, the
Session IDs contentview in mitmweb, and how figures read."""
