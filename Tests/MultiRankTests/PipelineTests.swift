import Foundation
import XCTest
import RNNTrain
import Margins

/// Pipeline model parallelism (parallel.pipeline_stages) under a real mpirun: N = D x S ranks,
/// D replicas of an S-stage pipeline, against one process.
final class PipelineTests: XCTestCase {
    /// A 4-layer (or 3-layer) character model with layer norm, in chunks of 4 of its 12 steps.
    func config(_ dir: String, cell: String = "lstm", layers: Int = 4, output: String = "every_step", steps: Int = 6, extra: String = "") -> String {
        let path = "\(dir)/c.yaml"
        MPIRunner.write("""
        seed: 5
        data:
          kind: text
          path: \(MPIRunner.sharedData("tinyshakespeare.txt"))
        model:
          cell: \(cell)
          hidden_size: 16
          layers: \(layers)
          layer_norm: true
          output: \(output)
        training:
          global_batch_size: 6
          sequence_length: 12
          steps: \(steps)
          threads: 1
          check_every: 2
          eval_samples: 12
          optimizer:
            learning_rate: 0.1
            momentum: 0.9
          clip_norm: 5.0
        parallel:
          chunk_steps: 4
        output:
          directory: \(dir)/out
          log_every: 1
        \(extra)
        """, to: path)
        return path
    }

    /// (D, S) as (ranks, stages).
    static let layouts = [(1, 2), (1, 3), (2, 2), (1, 4)]

    func train(np: Int, stages: Int, _ path: String, _ more: [String] = []) throws -> MPIRunner.Outcome {
        try MPIRunner.run(np: np, ["train", "--config", path, "--set", "parallel.pipeline_stages=\(stages)"] + more)
    }

    /// LSTM (every step), GRU (last step) and a 3-layer Elman RNN, all with layer norm: every
    /// layout trains the model one process trains, within 1e-5 relative, and reports its layout.
    func testEveryLayoutTrainsTheModelOfOneProcess() throws {
        for (cell, layers, output) in [("lstm", 4, "every_step"), ("gru", 4, "last_step"), ("rnn", 3, "every_step")] {
            let refDir = MPIRunner.tempDir()
            let ref = try train(np: 0, stages: 1, config(refDir, cell: cell, layers: layers, output: output))
            XCTAssertEqual(ref.status, 0, ref.stderr)
            let reference = try SafeTensors.read(path: "\(refDir)/out/model.safetensors")
            for (d, s) in Self.layouts where s <= layers {
                let dir = MPIRunner.tempDir()
                let r = try train(np: d * s, stages: s, config(dir, cell: cell, layers: layers, output: output))
                let what = "\(cell) \(output) (D, S) = (\(d), \(s))"
                XCTAssertEqual(r.status, 0, "\(what): \(r.stderr)")
                XCTAssertTrue(r.stdout.contains("pipeline: \(s) stages x \(d) replica"), "\(what): \(r.stdout)")
                XCTAssertTrue(r.stdout.contains("replicas: every stage's parameters bitwise identical on its \(d) replica"), what)
                assertClose(try SafeTensors.read(path: "\(dir)/out/model.safetensors"), reference, 1e-5, what, group: "Pipeline")
                // The validation loss is the model's, whatever the layout (evaluated whole).
                XCTAssertEqual(validation(r.stdout), validation(ref.stdout), what)
            }
        }
    }

    /// What else a run can do keeps working under a pipeline, as one process (or plain data
    /// parallelism) does it, within 1e-5: accumulation with truncated BPTT, stateful streams, batch
    /// norm (statistics over each stage's replicas; one chunk), bf16 buckets at (2, 2) against np = 2,
    /// a replica check that catches a perturbed stage, and the sample at the end.
    func testOtherFeaturesUnderAPipeline() throws {
        let cases: [(String, [String], Int)] = [
            ("accumulation + truncated BPTT", ["--set", "training.accumulate_steps=2", "--set", "training.bptt_length=6"], 1),
            ("stateful streams", ["--set", "training.stateful=true"], 1),
            ("batch norm", ["--set", "model.batch_norm=true", "--set", "parallel.chunk_steps=0"], 1),
            ("bf16 buckets", ["--set", "training.compression=bf16", "--set", "training.bucket_mb=0.01"], 2),
        ]
        for (what, set, replicas) in cases {
            let refDir = MPIRunner.tempDir()
            let ref = try train(np: replicas == 1 ? 0 : replicas, stages: 1, config(refDir), set)
            XCTAssertEqual(ref.status, 0, "\(what): \(ref.stderr)")
            let dir = MPIRunner.tempDir()
            let r = try train(np: 2 * replicas, stages: 2, config(dir), set + ["--set", "output.sample_length=20"])
            XCTAssertEqual(r.status, 0, "\(what): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("sample (temperature"), "\(what): \(r.stdout)")
            assertClose(try SafeTensors.read(path: "\(dir)/out/model.safetensors"), try SafeTensors.read(path: "\(refDir)/out/model.safetensors"),
                        1e-5, "pipeline (\(replicas), 2) \(what)", group: "Pipeline")
        }
        // Rank 2 is stage 0 of replica 1: its parameters drift from replica 0's.
        let dir = MPIRunner.tempDir()
        let p = try MPIRunner.run(np: 4, ["train", "--config", config(dir), "--set", "parallel.pipeline_stages=2"], env: ["RNN_DP_FAULT": "perturb:2:3"])
        XCTAssertEqual(p.status, 3, p.stderr)
        XCTAssertTrue(p.stderr.contains("replicas diverged at step 4: parameters of rank 2 differ from those of rank 0 (the first replica of their stage)"), p.stderr)
    }

    /// Sequences of different lengths (JapaneseVowels, 7 to 29 steps, packed batches) in chunks
    /// of 5 steps, so chunks end inside samples: (1, 3) and (2, 2) train one process's model.
    func testVariableLengthsUnderAPipeline() throws {
        func vowels(_ dir: String) -> String {
            let path = "\(dir)/c.yaml"
            MPIRunner.write("""
            seed: 4
            data:
              kind: ts
              path: \(MPIRunner.sharedData("JapaneseVowels_TRAIN.ts"))
              validation_path: \(MPIRunner.sharedData("JapaneseVowels_TEST.ts"))
            model: {cell: lstm, hidden_size: 16, layers: 3, output: last_step, layer_norm: true}
            training:
              global_batch_size: 7
              steps: 6
              threads: 1
              eval_samples: 60
              optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.9}
            parallel: {chunk_steps: 5}
            output: {directory: \(dir)/out, log_every: 3}
            """, to: path)
            return path
        }
        let refDir = MPIRunner.tempDir()
        let ref = try train(np: 0, stages: 1, vowels(refDir))
        XCTAssertEqual(ref.status, 0, ref.stderr)
        for (d, s) in [(1, 3), (2, 2)] {
            let dir = MPIRunner.tempDir()
            let r = try train(np: d * s, stages: s, vowels(dir))
            XCTAssertEqual(r.status, 0, r.stderr)
            assertClose(try SafeTensors.read(path: "\(dir)/out/model.safetensors"), try SafeTensors.read(path: "\(refDir)/out/model.safetensors"),
                        1e-5, "pipeline (\(d), \(s)) JapaneseVowels", group: "Pipeline")
        }
    }

    func validation(_ stdout: String) -> String? {
        stdout.split(separator: "\n").first { $0.hasPrefix("validation: loss") }.map(String.init)
    }

    func bits(_ path: String) throws -> [String: [UInt32]] {
        let f = try SafeTensors.read(path: path)
        return Dictionary(uniqueKeysWithValues: f.tensors.map { ($0.name, $0.values.map(\.bitPattern)) })
    }

    /// training.reproducible: every layout gives the bits of one process (the chunks have the
    /// same shapes whatever the split, and each stage's tensors are summed exactly).
    func testReproducibleLayoutsAreBitwiseOneProcess() throws {
        let refDir = MPIRunner.tempDir()
        XCTAssertEqual(try train(np: 0, stages: 1, reproducibleConfig(refDir)).status, 0)
        let reference = try bits("\(refDir)/out/model.safetensors")
        for (d, s) in Self.layouts {
            let dir = MPIRunner.tempDir()
            let r = try train(np: d * s, stages: s, reproducibleConfig(dir))
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try bits("\(dir)/out/model.safetensors"), reference, "(D, S) = (\(d), \(s))")
        }
    }

    func reproducibleConfig(_ dir: String, steps: Int = 6) -> String {
        let path = config(dir, steps: steps)
        let text = try! String(contentsOfFile: path, encoding: .utf8)
            .replacingOccurrences(of: "  clip_norm: 5.0", with: "  clip_norm: 5.0\n  reproducible: true\n  micro_shards: 6")
        MPIRunner.write(text, to: path)
        return path
    }

    /// 3 steps at (1, 2), resumed at (2, 1), equal 6 steps of one process, bitwise.
    func testResumeAcrossLayouts() throws {
        let dir = MPIRunner.tempDir()
        let path = reproducibleConfig(dir)
        let first = try train(np: 2, stages: 2, path, ["--set", "training.steps=3"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let resumed = try MPIRunner.run(np: 2, ["train", "--resume", "\(dir)/out/checkpoints", "--set", "training.steps=6"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from"), resumed.stdout)
        let straight = MPIRunner.tempDir()
        XCTAssertEqual(try train(np: 0, stages: 1, reproducibleConfig(straight)).status, 0)
        XCTAssertEqual(try bits("\(dir)/out/model.safetensors"), try bits("\(straight)/out/model.safetensors"))
    }

    /// A killed stage ends the job; a stopped one trips the others' watchdog; SIGUSR1 to a stage
    /// checkpoints at a step boundary (exit 75).
    func testFailuresOfAStage() throws {
        for fault in ["kill", "stop", "usr1"] {
            let dir = MPIRunner.tempDir()
            let path = config(dir, steps: 100_000)
            let started = Date()
            let job = try MPIRunner.start(np: 2, ["train", "--config", path, "--set", "parallel.pipeline_stages=2", "--set", "training.timeout_seconds=3"])
            XCTAssertTrue(MPIRunner.waitForStep(5, metricsIn: "\(dir)/out"), "\(fault): the job did not reach step 5")
            let pids = MPIRunner.rankPIDs(containing: path)
            XCTAssertEqual(pids.count, 2)
            let target = pids.last!  // stage 1: the head
            kill(target, fault == "kill" ? SIGKILL : fault == "stop" ? SIGSTOP : SIGUSR1)
            let r = MPIRunner.finish(job, started: started, timeout: 60)
            if fault == "stop" { kill(target, SIGKILL) }
            switch fault {
            case "usr1":
                XCTAssertEqual(r.status, 75, r.stderr)
                XCTAssertTrue(r.stderr.contains("SIGUSR1 received: checkpoint written at step"), r.stderr)
            case "stop":
                XCTAssertNotEqual(r.status, 0)
                XCTAssertTrue(r.stderr.contains("did not complete within 3.0 s"), r.stderr)
            default:
                XCTAssertNotEqual(r.status, 0)
            }
            XCTAssertLessThan(r.seconds, 50, fault)
        }
    }

    /// Layouts that cannot work are one line on every rank, before training.
    func testLayoutErrors() throws {
        let dir = MPIRunner.tempDir()
        let r = try train(np: 3, stages: 2, config(dir))
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("parallel.pipeline_stages 2 does not divide the 3 ranks"), r.stderr)
        let s = try train(np: 2, stages: 2, config(MPIRunner.tempDir(), layers: 1))
        XCTAssertEqual(s.status, 2, s.stderr)
        XCTAssertTrue(s.stderr.contains("parallel.pipeline_stages: 2 stages need at least as many layers, but model.layers is 1"), s.stderr)
        let t = try MPIRunner.run(np: 2, ["train", "--config", config(MPIRunner.tempDir()), "--set", "parallel.pipeline_stages=2",
                                          "--set", "parallel.stage_layers=3,2"])
        XCTAssertEqual(t.status, 2, t.stderr)
        XCTAssertTrue(t.stderr.contains("parallel.stage_layers: '3,2' is not 2 positive layer counts"), t.stderr)
        // A hand split is used as given.
        let h = try MPIRunner.run(np: 2, ["train", "--config", config(MPIRunner.tempDir(), steps: 2), "--set", "parallel.pipeline_stages=2",
                                          "--set", "parallel.stage_layers=3,1"])
        XCTAssertEqual(h.status, 0, h.stderr)
        XCTAssertTrue(h.stdout.contains("stage 0: layers 0..<3 + input"), h.stdout)
    }
}
