import Foundation
import XCTest
import RNNTrain

/// A run owns its directory: no run destroys, mixes or silently corrupts another run's files,
/// and every input that cannot work is one line and exit 2 (under a real mpirun).
final class RunDirectoryTests: XCTestCase {
    func config(_ dir: String, steps: Int = 12, extra: String = "") -> String {
        let path = "\(dir)/c.yaml"
        MPIRunner.write("""
        seed: 3
        data: {kind: synthetic, length: 6}
        model: {cell: gru, hidden_size: 8}
        training: {steps: \(steps), global_batch_size: 6, threads: 1, optimizer: {name: adam, learning_rate: 0.01}}
        checkpoint: {every: 4, keep: 3}
        output: {directory: \(dir)/out, log_every: 1}
        \(extra)
        """, to: path)
        return path
    }

    /// Every file under `dir` with its bytes.
    func snapshot(_ dir: String) -> [String: Data] {
        var files: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: dir)
        while let f = e?.nextObject() as? String {
            if let d = FileManager.default.contents(atPath: "\(dir)/\(f)") { files[f] = d }
        }
        return files
    }

    func errorLines(_ r: MPIRunner.Outcome) -> [Substring] { r.stderr.split(separator: "\n").filter { $0.hasPrefix("rnn-dp: error") } }

    func metricsSteps(_ dir: String) throws -> [Int] {
        try String(contentsOfFile: "\(dir)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .map { try XCTUnwrap((JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["step"] as? Int) }
    }

    /// A second run into a finished run's directory is refused and changes no byte there;
    /// --overwrite moves the old files aside (nothing lost); --resume accepts the run directory.
    func testAFinishedRunIsNeitherDestroyedNorMixed() throws {
        let dir = MPIRunner.tempDir()
        let path = config(dir)
        let first = try MPIRunner.run(np: 2, ["train", "--config", path])
        XCTAssertEqual(first.status, 0, first.stderr)
        // The progress line carries the elapsed time, and the ETA until the last step.
        XCTAssertTrue(first.stdout.contains("step 6/12 |") && first.stdout.split(separator: "\n").contains { $0.hasPrefix("step 6/12 |") && $0.contains("| elapsed ") && $0.contains("| ETA ") }, first.stdout)
        XCTAssertTrue(first.stdout.split(separator: "\n").contains { $0.hasPrefix("step 12/12 |") && $0.contains("| elapsed ") && !$0.contains("ETA") }, first.stdout)
        let before = snapshot("\(dir)/out")
        XCTAssertNotNil(before["model.safetensors"])

        let again = try MPIRunner.run(np: 2, ["train", "--config", path, "--set", "seed=4"])
        XCTAssertEqual(again.status, 2, again.stderr)
        XCTAssertEqual(errorLines(again).count, 1, again.stderr)
        XCTAssertTrue(again.stderr.contains("output.directory \(dir)/out holds another run's files (metrics.jsonl, model.safetensors, 3 checkpoints)"), again.stderr)
        XCTAssertTrue(again.stderr.contains("--resume \(dir)/out") && again.stderr.contains("--overwrite"), again.stderr)
        XCTAssertEqual(snapshot("\(dir)/out"), before, "a refused run changed the directory")

        let replaced = try MPIRunner.run(np: 2, ["train", "--config", path, "--set", "seed=4", "--overwrite"])
        XCTAssertEqual(replaced.status, 0, replaced.stderr)
        let moved = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/out").first { $0.hasPrefix("previous-") })
        XCTAssertEqual(FileManager.default.contents(atPath: "\(dir)/out/\(moved)/model.safetensors"), before["model.safetensors"])
        XCTAssertEqual(FileManager.default.contents(atPath: "\(dir)/out/\(moved)/checkpoints/ckpt-00000012.safetensors"),
                       before["checkpoints/ckpt-00000012.safetensors"])
        XCTAssertNotEqual(FileManager.default.contents(atPath: "\(dir)/out/model.safetensors"), before["model.safetensors"])
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/out/checkpoints")),
                       ["ckpt-00000004.safetensors", "ckpt-00000008.safetensors", "ckpt-00000012.safetensors", "latest"], "no checkpoint of the old run mixed in")

        let resumed = try MPIRunner.run(np: 2, ["train", "--resume", "\(dir)/out", "--set", "training.steps=16"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from \(dir)/out/checkpoints/ckpt-00000012.safetensors at step 12"), resumed.stdout)
    }

    /// A run into a directory in use is refused while the first lives; the lock dies with a
    /// SIGKILLed holder; the resume then removes the killed write's temporary file and drops the
    /// metrics rows after the checkpoint and a torn last line: the file reads as one run's.
    func testLockDiesWithItsHolderAndResumeCleansUp() throws {
        let dir = MPIRunner.tempDir()
        let path = config(dir, steps: 100_000)
        let started = Date()
        let job = try MPIRunner.start(np: 2, ["train", "--config", path])
        XCTAssertTrue(MPIRunner.waitForStep(14, metricsIn: "\(dir)/out"), "the job did not reach step 14")
        let second = try MPIRunner.run(np: 2, ["train", "--config", path, "--overwrite"], timeout: 60)
        XCTAssertEqual(second.status, 2, second.stderr)
        XCTAssertTrue(second.stderr.contains("output.directory \(dir)/out is in use by another run (pid "), second.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out/previous-"), "the refused --overwrite moved nothing")

        for pid in MPIRunner.rankPIDs(containing: path) { kill(pid, SIGKILL) }
        _ = MPIRunner.finish(job, started: started, timeout: 60)
        // What a SIGKILL during a checkpoint write and during a metrics write leave behind.
        let stale = "\(dir)/out/checkpoints/.ckpt-00099999.safetensors.tmp.4242"
        MPIRunner.write("partial", to: stale)
        let latest = try Checkpoint.read(path: try Checkpoint.resolve("\(dir)/out/checkpoints"))
        let saved = try XCTUnwrap(Int(latest.metadata["step"] ?? ""))
        // Rows the killed run wrote after its last checkpoint (up to checkpoint.every - 1 of them;
        // two more are added so the case never depends on where the kill fell), then a torn row.
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: "\(dir)/out/metrics.jsonl"))
        h.seekToEndOfFile()
        h.write(Data("{\"step\":\(saved + 1),\"loss\":1}\n{\"step\":\(saved + 2),\"loss\":1}\n{\"step\":99999,\"lo".utf8))
        h.closeFile()

        let resumed = try MPIRunner.run(np: 2, ["train", "--resume", "\(dir)/out", "--set", "training.steps=\(saved + 4)"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale), "the stale temporary was not removed")
        XCTAssertEqual(try metricsSteps("\(dir)/out"), Array(1...(saved + 4)), "metrics.jsonl as an uninterrupted run writes it")
    }

    /// A corrupt newest checkpoint stops the resume with a message that names the newest intact one.
    func testACorruptNewestCheckpointNamesTheNewestGoodOne() throws {
        let dir = MPIRunner.tempDir()
        XCTAssertEqual(try MPIRunner.run(np: 0, ["train", "--config", config(dir)]).status, 0)
        let newest = "\(dir)/out/checkpoints/ckpt-00000012.safetensors"
        var bytes = try XCTUnwrap(FileManager.default.contents(atPath: newest))
        bytes[bytes.count - 5] ^= 0x10
        XCTAssertTrue(FileManager.default.createFile(atPath: newest, contents: bytes))
        let r = try MPIRunner.run(np: 2, ["train", "--resume", "\(dir)/out", "--set", "training.steps=16"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(errorLines(r).count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("checksum mismatch"), r.stderr)
        XCTAssertTrue(r.stderr.contains("the newest intact checkpoint is ckpt-00000008.safetensors: --resume \(dir)/out/checkpoints/ckpt-00000008.safetensors"), r.stderr)
        let good = try MPIRunner.run(np: 2, ["train", "--resume", "\(dir)/out/checkpoints/ckpt-00000008.safetensors", "--set", "training.steps=16"])
        XCTAssertEqual(good.status, 0, good.stderr)
    }

    /// model.init_from verifies an rnn-dp file's checksum as --resume, eval and sample do;
    /// inspect reports the mismatch with a nonzero exit.
    func testInitFromAndInspectRejectAFlippedBit() throws {
        let dir = MPIRunner.tempDir()
        XCTAssertEqual(try MPIRunner.run(np: 1, ["train", "--config", config(dir)]).status, 0)
        var bytes = try XCTUnwrap(FileManager.default.contents(atPath: "\(dir)/out/model.safetensors"))
        bytes[bytes.count - 3] ^= 0x04  // inside the last tensor's data
        let bad = "\(dir)/flipped.safetensors"
        XCTAssertTrue(FileManager.default.createFile(atPath: bad, contents: bytes))
        let other = MPIRunner.tempDir()
        let r = try MPIRunner.run(np: 2, ["train", "--config", config(other), "--set", "model.init_from=\(bad)"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(errorLines(r).count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("model.init_from: \(bad): checksum mismatch"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(other)/out/metrics.jsonl"))
        let inspect = try MPIRunner.run(np: 0, ["inspect", bad])
        XCTAssertEqual(inspect.status, 2, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("checksum: MISMATCH"), inspect.stdout)
        XCTAssertEqual(try MPIRunner.run(np: 0, ["inspect", "\(dir)/out/model.safetensors"]).status, 0)
    }

    /// eval --data on a text with characters the model never saw names them and refuses, unless
    /// asked to skip them.
    func testEvalRefusesCharactersOutsideTheVocabulary() throws {
        let dir = MPIRunner.tempDir()
        MPIRunner.write(String(repeating: "abcab cabba\n", count: 60), to: "\(dir)/train.txt")
        MPIRunner.write(String(repeating: "abc xyz\n", count: 40), to: "\(dir)/other.txt")
        MPIRunner.write("data: {kind: text, path: \(dir)/train.txt}\nmodel: {hidden_size: 8}\ntraining: {steps: 3, global_batch_size: 4, sequence_length: 8}\noutput: {directory: \(dir)/out}\n", to: "\(dir)/c.yaml")
        XCTAssertEqual(try MPIRunner.run(np: 0, ["train", "--config", "\(dir)/c.yaml"]).status, 0)
        let args = ["eval", "--checkpoint", "\(dir)/out/model.safetensors", "--data", "\(dir)/other.txt", "--set", "data.validation_fraction=0.5"]
        let refused = try MPIRunner.run(np: 2, args)
        XCTAssertEqual(refused.status, 2, refused.stderr)
        XCTAssertEqual(errorLines(refused).count, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("\(dir)/other.txt: 60 of the 160 characters evaluated (37.5%) are not in the model's vocabulary of 5 (e.g. 'x', 'y', 'z')"), refused.stderr)
        let skipped = try MPIRunner.run(np: 2, args + ["--skip-unknown"])
        XCTAssertEqual(skipped.status, 0, skipped.stderr)
        XCTAssertTrue(skipped.stderr.contains("60 characters outside the model's vocabulary were left out"), skipped.stderr)
    }

    /// A model that cannot fit is one line on every rank before any allocation, and no file is
    /// written; the largest allowed hidden size is such a model.
    func testAModelTooLargeForTheMachineIsOneLine() throws {
        let dir = MPIRunner.tempDir()
        let r = try MPIRunner.run(np: 2, ["train", "--config", config(dir), "--set", "model.hidden_size=65536"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(errorLines(r).count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("this run needs about") && r.stderr.contains("per rank") && r.stderr.contains("lower model.hidden_size"), r.stderr)
        for bad in ["Fatal error", "Backtrace", "backtrace", "MPI_ABORT"] { XCTAssertFalse(r.stderr.contains(bad), r.stderr) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out"), "nothing is written for a run that cannot start")
    }

    /// RNN_DP_MPI=0 under mpirun would train N models into one directory: an error on every rank.
    func testMPIOffUnderALauncherIsAnError() throws {
        let dir = MPIRunner.tempDir()
        let r = try MPIRunner.run(np: 2, ["train", "--config", config(dir)], env: ["RNN_DP_MPI": "0"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(errorLines(r).count, 2, "one line from each rank: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("RNN_DP_MPI=0 but the launcher started 2 ranks"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out"))
    }

    /// Usage errors exit 2 as the README's table says (ArgumentParser's own code is 64), and a
    /// negative number is judged as a number, not as a missing value.
    func testUsageErrorsExitTwo() throws {
        for args in [["bogus"], ["train"], ["sample", "--checkpoint", "x", "--temperature", "0"], ["train", "--config", "x", "--resume", "y", "--overwrite"]] {
            let r = try MPIRunner.run(np: 0, args)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("Error: "), "\(args): \(r.stderr)")
        }
        let negative = try MPIRunner.run(np: 0, ["sample", "--checkpoint", "x", "--length", "-1"])
        XCTAssertEqual(negative.status, 2)
        XCTAssertTrue(negative.stderr.contains("--length must be >= 0"), negative.stderr)
        let huge = try MPIRunner.run(np: 0, ["sample", "--checkpoint", "x", "--length", "100000000000000"])
        XCTAssertEqual(huge.status, 2)
        XCTAssertTrue(huge.stderr.contains("is more than 100000000 characters"), huge.stderr)
    }
}
