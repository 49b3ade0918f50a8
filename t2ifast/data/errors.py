"""The errors the data floor raises: each names the file at fault, so a bad sample never ends a run anonymously."""


class DataError(Exception):
    """A dataset file is missing, unreadable or malformed. `path` is the file (or folder) at fault."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.problem))


class SkipReport:
    """Counts the samples skipped because the user asked to skip bad ones, with the reason for each."""

    def __init__(self):
        self.skipped = []  # list of (path, problem)

    def add(self, error):
        self.skipped.append((error.path, error.problem))

    def __len__(self):
        return len(self.skipped)

    def summary(self, limit=5):
        if not self.skipped:
            return "no samples skipped"
        shown = "; ".join(f"{path} ({problem})" for path, problem in self.skipped[:limit])
        more = f" and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return f"{len(self.skipped)} bad samples skipped: {shown}{more}"
