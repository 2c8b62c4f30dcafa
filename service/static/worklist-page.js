// Jobs, worklist, viewer and node health: the sections below the single-film scorer.
import { startJobs } from "./jobs.js";
import { startNode } from "./node.js";
import { startViewer } from "./viewer.js";
import { startWorklist } from "./worklist.js";

const viewer = startViewer();
const worklist = startWorklist({ openStudy: (study) => viewer.open(study) });
startJobs({ onJobs: (jobs) => worklist.setJobs(jobs), onShow: (id) => worklist.showJob(id) });
startNode();
