import Foundation

/// A run owns its output directory (and its checkpoint directory) for as long as it lives.
///
/// `claim` is called on rank 0 once the run is known to be valid (config, data, model, memory),
/// before anything is written:
/// 1. It takes an advisory lock, `flock` on `<output.directory>/.rnn-dp.lock`. The kernel drops
///    the lock when the holder dies (SIGKILL included), so a stale lock file never blocks.
///    A second run into a directory in use is refused, naming the holder's PID.
/// 2. It refuses a directory that holds another run's files (metrics.jsonl, model.safetensors,
///    ckpt-*.safetensors) unless the run continues it (`--resume`) or was told to replace it
///    (`--overwrite`, which moves those files into `previous-<time>/` inside the directory:
///    nothing is deleted).
/// 3. It removes the leftover temporary files of rnn-dp's own atomic writes
///    (`.NAME.tmp.PID`, see `AtomicFile`): with the lock held, no live run is writing them.
/// 4. On resume, it cuts metrics.jsonl back to the checkpoint's step, dropping the rows a crashed
///    run wrote after it and a torn last line, so the file reads as an uninterrupted run's would.
public final class RunDirectory {
    public let path: String
    private var lockDescriptor: Int32

    static let lockName = ".rnn-dp.lock"

    private init(path: String, lockDescriptor: Int32) {
        self.path = path
        self.lockDescriptor = lockDescriptor
    }

    deinit { release() }

    /// Drops the lock (at the end of the run; also on deinit).
    public func release() {
        if lockDescriptor >= 0 { flock(lockDescriptor, LOCK_UN); close(lockDescriptor); lockDescriptor = -1 }
    }

    public enum Intent: Equatable {
        case fresh
        case overwrite
        /// Continue the run checkpointed at `step`.
        case resume(step: Int)
    }

    public static func claim(output: String, checkpoints: String, intent: Intent) throws -> RunDirectory {
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: output, withIntermediateDirectories: true)
        } catch {
            throw RNNDPError("output.directory \(output): cannot create it (\((error as NSError).localizedDescription))", exitCode: RNNDPError.runtimeFailure)
        }
        let lockPath = "\(output)/\(lockName)"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw RNNDPError("output.directory \(output): cannot create \(lockName): \(String(cString: strerror(errno)))", exitCode: RNNDPError.runtimeFailure)
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: lockPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            close(fd)
            throw RNNDPError("output.directory \(output) is in use by another run\(holder.isEmpty ? "" : " (\(holder))"): wait for it to end, or choose another output.directory")
        }
        let run = RunDirectory(path: output, lockDescriptor: fd)

        let previous = runFiles(output: output, checkpoints: checkpoints)
        switch intent {
        case .fresh where !previous.isEmpty:
            throw RNNDPError("output.directory \(output) holds another run's files (\(describe(previous, output: output))): "
                             + "continue it with --resume \(output), replace it with --overwrite (moves them to \(output)/previous-TIME), or choose another output.directory")
        case .overwrite where !previous.isEmpty:
            let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
            let dest = "\(output)/previous-\(stamp)"
            do {
                try fm.createDirectory(atPath: dest, withIntermediateDirectories: true)
                for f in previous {
                    let target = "\(dest)/\(f.hasPrefix(checkpoints + "/") ? "checkpoints/" : "")\(URL(fileURLWithPath: f).lastPathComponent)"
                    try fm.createDirectory(atPath: URL(fileURLWithPath: target).deletingLastPathComponent().path, withIntermediateDirectories: true)
                    try fm.moveItem(atPath: f, toPath: target)
                }
                try? fm.removeItem(atPath: "\(checkpoints)/latest")
            } catch {
                throw RNNDPError("--overwrite: cannot move the previous run's files to \(dest) (\((error as NSError).localizedDescription))", exitCode: RNNDPError.runtimeFailure)
            }
        default: break
        }
        // Past every refusal: name the holder for a run that finds the directory in use.
        ftruncate(fd, 0)
        _ = "pid \(getpid()) on \(ProcessInfo.processInfo.hostName)\n".withCString { Glibc.write(fd, $0, strlen($0)) }
        removeStaleTemporaries(in: [output, checkpoints])
        if case .resume(let step) = intent {
            try truncateMetrics("\(output)/metrics.jsonl", afterStep: step)
        }
        return run
    }

    /// The files of a run in these directories: metrics, model, checkpoints.
    static func runFiles(output: String, checkpoints: String) -> [String] {
        let fm = FileManager.default
        var files = ["metrics.jsonl", "model.safetensors"].map { "\(output)/\($0)" }.filter { fm.fileExists(atPath: $0) }
        files += Checkpoint.list(checkpoints).map { "\(checkpoints)/\($0.name)" }
        return files
    }

    static func describe(_ files: [String], output: String) -> String {
        let checkpoints = files.filter { URL(fileURLWithPath: $0).lastPathComponent.hasPrefix("ckpt-") }.count
        var parts = files.filter { !URL(fileURLWithPath: $0).lastPathComponent.hasPrefix("ckpt-") }.map { URL(fileURLWithPath: $0).lastPathComponent }
        if checkpoints > 0 { parts.append("\(checkpoints) checkpoint\(checkpoints == 1 ? "" : "s")") }
        return parts.joined(separator: ", ")
    }

    /// `.NAME.tmp.PID` files (AtomicFile's temporaries) left by a run that died mid-write.
    static func removeStaleTemporaries(in directories: [String]) {
        for dir in Set(directories) {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where isAtomicTemporary(name) {
                try? FileManager.default.removeItem(atPath: "\(dir)/\(name)")
            }
        }
    }

    static func isAtomicTemporary(_ name: String) -> Bool {
        guard name.hasPrefix("."), let r = name.range(of: ".tmp.", options: .backwards) else { return false }
        return !name[r.upperBound...].isEmpty && name[r.upperBound...].allSatisfy(\.isNumber)
    }

    /// Rewrites metrics.jsonl (atomically) with only its complete rows up to `step`.
    static func truncateMetrics(_ path: String, afterStep step: Int) throws {
        guard let data = FileManager.default.contents(atPath: path) else { return }
        var kept: [UInt8] = []
        var dropped = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) where !line.isEmpty {
            let complete = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any]
            if let row = complete, let s = row["step"] as? Int, s <= step {
                kept += line + [UInt8(ascii: "\n")]
            } else {
                dropped += 1
            }
        }
        if dropped > 0 { try AtomicFile.write(path: path, bytes: kept) }
    }
}
