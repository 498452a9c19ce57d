/// An error meant for the person at the terminal: one line, naming the culprit.
///
/// Exit codes (documented in the README): 2 bad input (usage, config, data, rank count),
/// 1 runtime failure (MPI, I/O), 3 replicas diverged.
public struct RNNDPError: Error, CustomStringConvertible {
    public let message: String
    public let exitCode: Int32
    /// True when every rank raises this same error at the same point (it was derived from the
    /// result of a collective or from inputs every rank reads identically), so the job can stop
    /// cleanly on every rank without MPI_Abort.
    public let collective: Bool

    public init(_ message: String, exitCode: Int32 = 2, collective: Bool = false) {
        self.message = message
        self.exitCode = exitCode
        self.collective = collective
    }
    public var description: String { message }

    public static let badInput: Int32 = 2
    public static let runtimeFailure: Int32 = 1
    public static let replicasDiverged: Int32 = 3
}

/// The job stopped on purpose after writing a checkpoint (a stop signal): every rank exits with
/// Signals.resumeExitCode and rank 0 says how to continue.
public struct ResumableStop: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
