"""Reports built from eval entries: the leaderboard, the correlation study and their plots."""
