import Foundation

/// Output for the person at the terminal. Progress is printed by rank 0 only; errors by the rank
/// that has them, tagged with its number when the job has more than one rank.
public struct Console: Sendable {
    public let rank: Int
    public let size: Int
    public init(rank: Int, size: Int) {
        self.rank = rank
        self.size = size
    }

    /// A line on standard output from rank 0.
    public func info(_ line: String) {
        guard rank == 0 else { return }
        print(line)
        fflush(stdout)
    }

    /// A line on standard error from rank 0.
    public func warn(_ line: String) {
        guard rank == 0 else { return }
        FileHandle.standardError.write(Data("rnn-dp: warning: \(line)\n".utf8))
    }

    /// A duration for a progress line: "42s", "3m05s", "2h07m".
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        if s < 60 { return "\(s)s" }
        if s < 3600 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return String(format: "%dh%02dm", s / 3600, (s % 3600) / 60)
    }

    /// The one-line error message of this rank.
    public func error(_ message: String) {
        let tag = size > 1 ? " (rank \(rank))" : ""
        FileHandle.standardError.write(Data("rnn-dp: error\(tag): \(message)\n".utf8))
    }
}

/// Seconds on a monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
