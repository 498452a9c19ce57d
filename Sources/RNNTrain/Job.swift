import Foundation
import RNNDistributed

/// A failure every rank agreed on through `Job.collectively`: the job stops on all ranks with
/// `exitCode`; `message` is set only on the rank that reports it.
public struct JobFailed: Error, CustomStringConvertible {
    public let exitCode: Int32
    public let message: String?
    public var description: String { message ?? "failed on another rank (exit code \(exitCode))" }
}

/// Runs a command's body on every rank and turns every error into one message and one exit code.
public enum Job {
    /// Runs `body` on every rank; if it throws on any rank, all ranks throw JobFailed with the
    /// same exit code, and only the lowest failing rank carries the message. Use around phases
    /// where a rank may fail alone (reading files, creating directories), so that no rank goes on
    /// into a collective the failed one will never join.
    public static func collectively<T>(_ comm: Communicator, _ body: () throws -> T) throws -> T {
        var result: T?
        var code: Int32 = 0
        var message = ""
        do {
            result = try body()
        } catch let e as RNNDPError {
            code = e.exitCode
            message = e.message
        } catch {
            code = RNNDPError.runtimeFailure
            message = String(describing: error)
        }
        let codes = try comm.allgather(UInt64(UInt32(bitPattern: code)))
        if let first = codes.firstIndex(where: { $0 != 0 }) {
            throw JobFailed(exitCode: Int32(bitPattern: UInt32(codes[first])), message: first == comm.rank ? message : nil)
        }
        return result!
    }

    /// Runs a command on every rank: creates the communicator, runs `body`, reports any error
    /// once, finalizes MPI, and returns the process exit code.
    public static func run(_ body: (Communicator, Console) throws -> Void) -> Int32 {
        let comm: Communicator
        do {
            comm = try Launch.communicator()
        } catch let e as CommunicatorError where e.operation == "launch" {
            // A launch that cannot work as asked (every rank sees the same environment).
            Console(rank: 0, size: 1).error(e.message)
            return RNNDPError.badInput
        } catch {
            Console(rank: 0, size: 1).error("cannot start MPI: \(error)")
            return RNNDPError.runtimeFailure
        }
        let console = Console(rank: comm.rank, size: comm.size)
        do {
            try body(comm, console)
            comm.finalize()
            return 0
        } catch let e as ResumableStop {
            if comm.rank == 0 { FileHandle.standardError.write(Data("rnn-dp: \(e.message)\n".utf8)) }
            comm.finalize()
            return Signals.resumeExitCode
        } catch let e as JobFailed {
            // Agreed failures are reported by the lowest failing rank; rank 0's needs no tag.
            if let m = e.message { (comm.rank == 0 ? Console(rank: 0, size: 1) : console).error(m) }
            comm.finalize()
            return e.exitCode
        } catch let e as RNNDPError where e.collective {
            // Raised identically on every rank: report once, stop together.
            if comm.rank == 0 { Console(rank: 0, size: 1).error(e.message) }
            comm.finalize()
            return e.exitCode
        } catch {
            // Known to this rank only: report it and end the whole job, so no rank waits forever.
            let code = (error as? RNNDPError)?.exitCode ?? RNNDPError.runtimeFailure
            console.error(String(describing: error))
            if comm.size > 1 { comm.abort(code: code) }
            return code
        }
    }
}
