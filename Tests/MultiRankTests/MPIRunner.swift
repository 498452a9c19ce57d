import Foundation
import XCTest
import RNNTrain
import Margins

/// Launches the built `rnn-dp` executable, under `mpirun -np N` or alone, and collects its
/// output. The executable sits next to the test bundle.
enum MPIRunner {
    struct Outcome {
        let status: Int32
        let stdout: String
        let stderr: String
        let seconds: Double
    }

    /// The test runner is `.build/<config>/<package>PackageTests.xctest`; rnn-dp is its sibling.
    static var executable: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("rnn-dp").path
    }

    static var projectRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    static func sharedData(_ name: String) -> String {
        projectRoot.deletingLastPathComponent().appendingPathComponent("shared/data/\(name)").path
    }

    static func tempDir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-mpi-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static func write(_ text: String, to path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    }

    /// The command line: `mpirun ... rnn-dp args` for np > 0, the bare executable for np = 0.
    static func commandLine(np: Int, _ args: [String]) -> [String] {
        np > 0 ? ["mpirun", "-np", String(np), "--oversubscribe", "--bind-to", "none", executable] + args : [executable] + args
    }

    /// Starts `command` (through /usr/bin/env) with Open MPI's root variables when root, and
    /// stdout/stderr going to fresh files; `finish` collects it.
    static func launch(_ command: [String], env extra: [String: String] = [:]) throws -> (Process, URL, URL) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = command
        var env = ProcessInfo.processInfo.environment
        if getuid() == 0 {
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        env["OMPI_MCA_btl_base_warn_component_unused"] = "0"
        for (k, v) in extra { env[k] = v }
        p.environment = env
        let outURL = URL(fileURLWithPath: tempDir()).appendingPathComponent("out")
        let errURL = outURL.deletingLastPathComponent().appendingPathComponent("err")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: outURL)
        p.standardError = try FileHandle(forWritingTo: errURL)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return (p, outURL, errURL)
    }

    /// Starts `rnn-dp args` on `np` ranks without waiting; `finish` collects it.
    static func start(np: Int, _ args: [String], env extra: [String: String] = [:]) throws -> (Process, URL, URL) {
        try launch(commandLine(np: np, args), env: extra)
    }

    static func finish(_ job: (Process, URL, URL), started: Date, timeout: Double, file: StaticString = #filePath, line: UInt = #line) -> Outcome {
        let (p, outURL, errURL) = job
        while p.isRunning && Date().timeIntervalSince(started) < timeout { usleep(20_000) }
        if p.isRunning {
            p.terminate()
            usleep(500_000)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            XCTFail("job did not finish within \(timeout) s", file: file, line: line)
        }
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                       stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "", seconds: Date().timeIntervalSince(started))
    }

    /// PIDs of the rnn-dp rank processes whose command line contains `marker` (e.g. a unique path).
    static func rankPIDs(containing marker: String) -> [Int32] {
        let procs = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return procs.compactMap { Int32($0) }.filter { pid in
            guard let cmd = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let args = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return args.first.map { $0.hasSuffix("/rnn-dp") } == true && args.contains { $0.contains(marker) }
        }.sorted()
    }

    /// Waits until metrics.jsonl in `dir` has a record with step >= `step`.
    static func waitForStep(_ step: Int, metricsIn dir: String, timeout: Double = 60) -> Bool {
        let start = Date()
        while Date().timeIntervalSince(start) < timeout {
            if let text = try? String(contentsOfFile: "\(dir)/metrics.jsonl", encoding: .utf8),
               let last = text.split(separator: "\n").last,
               let obj = try? JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any],
               let s = obj["step"] as? Int, s >= step { return true }
            usleep(20_000)
        }
        return false
    }

    /// Runs `rnn-dp args` on `np` ranks (np = 0: a plain process without mpirun). Kills the job
    /// and records a failure after `timeout` seconds, so a hang fails the test instead of CI.
    static func run(np: Int, _ args: [String], env extra: [String: String] = [:], timeout: Double = 120,
                    file: StaticString = #filePath, line: UInt = #line) throws -> Outcome {
        let started = Date()
        return finish(try launch(commandLine(np: np, args), env: extra), started: started, timeout: timeout, file: file, line: line)
    }
}

extension XCTestCase {
    /// Every tensor of model file `m` within `tolerance` (relative, with a floor of 1e-2) of
    /// `reference`; the worst deviation is reported as a margin under `group`.
    func assertClose(_ m: SafeTensors.File, _ reference: SafeTensors.File, _ tolerance: Double, _ what: String,
                     group: String = "DataParallel", file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(m.tensors.map(\.name), reference.tensors.map(\.name), what, file: file, line: line)
        var worst = 0.0, worstName = ""
        for (a, b) in zip(m.tensors, reference.tensors) {
            for (x, y) in zip(a.values, b.values) {
                let e = Double(abs(x - y)) / max(Double(abs(y)), 1e-2)
                if e > worst { worst = e; worstName = a.name }
            }
        }
        Margin.report(group, what, value: worst, must: .below, bound: tolerance)
        XCTAssertLessThan(worst, tolerance, "\(what): \(worstName) differs by \(worst) relative", file: file, line: line)
    }
}
